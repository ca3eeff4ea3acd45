// Preloaded into every server process the bench starts, Mrezhen and peers alike
// (`node --expose-gc --import server-hook.mjs <server>`), so all are treated the same:
// - SIGUSR2 runs a full garbage collection, so the idle scenario reads RSS after a collection;
// - the server exits once the bench that started it is gone (its parent changed), so even a bench
//   killed with SIGKILL leaves no server behind.
const parent = process.ppid;

process.on("SIGUSR2", () => globalThis.gc?.());

setInterval(() => {
  if (process.ppid !== parent) process.exit(1);
}, 1000).unref();
