// Builds the dashboard into dist/ (committed, embedded in the binary by build.rs). The build must
// be deterministic: scripts/dashboard-check.sh rebuilds it in CI and fails on any difference.
import { defineConfig } from 'vite';
import vue from '@vitejs/plugin-vue';

export default defineConfig({
  base: '/dashboard/',
  plugins: [vue()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    // One JS and one CSS file: no module-preload polyfill (it would be an inline script, which
    // the page's CSP refuses) and no source maps in the binary.
    modulePreload: { polyfill: false },
    sourcemap: false,
    cssCodeSplit: false,
    target: 'es2020',
  },
  define: {
    __VUE_OPTIONS_API__: 'false',
    __VUE_PROD_DEVTOOLS__: 'false',
    __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: 'false',
  },
});
