/** Render counts, read by the CI test (one render burst per batch of events, not one per event). */
export const renders = { bell: 0, list: 0 };
(globalThis as { __renders?: typeof renders }).__renders = renders;
