// The inbox's alerts, each switchable and remembered in localStorage: a short sound, the unread
// count in the page title, and desktop notifications.
import { reactive, watch } from 'vue';

const KEY = 'larachat.dashboard.alerts';
const defaults = { sound: true, title: true, desktop: false };
let saved = {};
try {
  saved = JSON.parse(localStorage.getItem(KEY) || '{}') || {};
} catch (_) {
  saved = {};
}
export const alerts = reactive({ ...defaults, ...saved });
watch(alerts, (a) => localStorage.setItem(KEY, JSON.stringify({ sound: a.sound, title: a.title, desktop: a.desktop })));

let audio;
/** Creates the audio context from a user gesture (browsers refuse to start one otherwise). */
export function unlockSound() {
  if (audio) return;
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (Ctx) audio = new Ctx();
}

/** Two short tones, generated (no audio file to load or allow in the CSP). */
export function playSound() {
  if (!alerts.sound || !audio) return;
  const t = audio.currentTime;
  for (const [i, f] of [880, 1320].entries()) {
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.frequency.value = f;
    g.gain.setValueAtTime(0.0001, t + i * 0.12);
    g.gain.exponentialRampToValueAtTime(0.15, t + i * 0.12 + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.12 + 0.11);
    o.connect(g).connect(audio.destination);
    o.start(t + i * 0.12);
    o.stop(t + i * 0.12 + 0.12);
  }
}

/** Asks for the permission when desktop notifications are switched on. */
export async function enableDesktop() {
  if (!('Notification' in window)) return 'unsupported';
  if (Notification.permission === 'granted') return 'granted';
  return Notification.requestPermission();
}

export function desktopNotify(title, body, onClick) {
  if (!alerts.desktop || !('Notification' in window) || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(title, { body, tag: 'larachat-inbox' });
    n.onclick = () => {
      window.focus();
      onClick();
      n.close();
    };
  } catch (_) {
    /* some browsers only allow notifications from a service worker */
  }
}
