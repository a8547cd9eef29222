// @ts-check
/*! Lara Chat loader: defines a queueing window.LaraChat stub, then loads widget.js async. */
(function (w, d) {
  try {
    var L = w.LaraChat;
    if (!L) {
      /** @type {[string, unknown[]][]} */
      var q = [];
      L = w.LaraChat = { q: q };
      ['open', 'close', 'identify', 'on'].forEach(function (m) {
        /** @type {LaraChatGlobal} */ (L)[m] = function () {
          q.push([m, [].slice.call(arguments)]);
        };
      });
    }
    if (L._loaded || L.base) return; // widget already there, or loader included twice
    var s = /** @type {HTMLScriptElement | null} */ (
      d.currentScript || d.querySelector('script[src*="/widget/loader.js"]')
    );
    var src = (s && s.src) || '';
    var base = src.replace(/\/widget\/loader\.js([?#].*)?$/, '');
    if (!src || base === src) return;
    L.base = base;
    L.config = w.LaraChatConfig;
    var t = d.createElement('script');
    // Served with this path replaced by the widget's content-hashed URL (docs/widget.md).
    t.src = base + '/widget/widget.js';
    t.async = true;
    (d.head || d.documentElement).appendChild(t);
  } catch (e) {
    try {
      console.warn('[LaraChat] loader failed', e);
    } catch (_) {
      /* nothing left to do */
    }
  }
})(window, document);
