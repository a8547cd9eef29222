// Hash routing (`/dashboard/#/projects/<id>/keys`): the server serves one page, no fallbacks.
import { reactive } from 'vue';

function parse() {
  const path = (location.hash || '#/').slice(1) || '/';
  const parts = path.split('?')[0].split('/').filter(Boolean).map(decodeURIComponent);
  return { path, parts };
}

export const route = reactive(parse());
window.addEventListener('hashchange', () => Object.assign(route, parse()));

export function go(path) {
  location.hash = `#${path}`;
}
