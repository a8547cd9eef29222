// Global names shared by loader.js, widget.js and the demo pages (type declarations only).

interface LaraChatUser {
  identifier: string;
  name?: string;
  email?: string;
  avatar?: string;
  user_hash?: string;
  user_jwt?: string;
}

interface LaraChatSettings {
  position?: string;
  theme?: string;
  locale?: string;
  title?: string;
  greeting?: string;
  accent_color?: string;
}

interface LaraChatPageConfig {
  apiKey?: string;
  user?: LaraChatUser | null;
  settings?: LaraChatSettings;
}

/** The loader's queueing stub, later replaced by the widget's API object. */
interface LaraChatGlobal {
  /** Calls made before widget.js loaded: [method, arguments]. */
  q?: [string, unknown[]][];
  /** Base URL of the Lara Chat server, derived from the loader's src. */
  base?: string;
  config?: LaraChatPageConfig;
  _loaded?: boolean;
  [method: string]: unknown;
}

interface Window {
  LaraChat?: LaraChatGlobal;
  LaraChatConfig?: LaraChatPageConfig;
  LaraChatDemo?: { tokenUrl?: string; projectId?: string };
}
