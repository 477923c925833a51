// No React plugin needed: esbuild compiles the TSX. `base: './'` so the build runs under any path.
// `npm run dev` proxies the stream and the demo's API to `pgsse demo` on its default address.
const gateway = process.env.PGSSE_DEMO ?? 'http://127.0.0.1:8080';

/** @type {import('vite').UserConfig} */
export default {
  base: './',
  esbuild: { jsx: 'automatic' },
  build: {
    sourcemap: false,
    rollupOptions: {
      // TanStack Query marks modules "use client" for React Server Components; meaningless here.
      onwarn(warning, warn) {
        if (warning.code !== 'MODULE_LEVEL_DIRECTIVE') warn(warning);
      },
    },
  },
  server: { proxy: { '/api': gateway, '/demo/api': gateway } },
};
