// Node ESM loader hooks for the k6 shim (registered with `module.register`
// by vu.mjs in every VU worker thread before it imports the script).
//
// - `resolve`: maps the k6 module specifiers the shim implements to the
//   files in ./modules/; any other `k6/...` specifier (k6/ws, k6/execution,
//   k6/crypto, ...) or a remote `https://` import fails with a clear message.
// - `load`: k6 scripts are ES modules even when named `*.js` and no
//   package.json says "type": "module", so every local `.js` file is loaded
//   with format "module".

const MAP = {
  k6: './modules/k6.mjs',
  'k6/http': './modules/http.mjs',
  'k6/data': './modules/data.mjs',
  'k6/metrics': './modules/metrics.mjs',
};

export async function resolve(specifier, context, nextResolve) {
  if (Object.hasOwn(MAP, specifier)) {
    return { url: new URL(MAP[specifier], import.meta.url).href, shortCircuit: true };
  }
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    throw new Error(
      `k6 shim: module "${specifier}" is not supported; the shim implements ${Object.keys(MAP).join(', ')}`,
    );
  }
  if (/^https?:\/\//.test(specifier)) {
    throw new Error(`k6 shim: remote modules are not supported (${specifier})`);
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (url.startsWith('file:') && url.endsWith('.js') && !url.includes('/node_modules/')) {
    return nextLoad(url, { ...context, format: 'module' });
  }
  return nextLoad(url, context);
}
