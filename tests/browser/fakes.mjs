// Test doubles shared by the node unit tests of clients/js: a scripted EventSource.

/** An EventSource the test drives: `emit` an event, `fail` with a readyState. */
export class FakeEventSource {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;
  static instances = [];

  constructor(url, init) {
    this.url = url;
    this.init = init;
    this.readyState = FakeEventSource.CONNECTING;
    this.listeners = {};
    this.onerror = null;
    FakeEventSource.instances.push(this);
  }

  addEventListener(type, fn) {
    (this.listeners[type] ??= new Set()).add(fn);
  }

  removeEventListener(type, fn) {
    this.listeners[type]?.delete(fn);
  }

  close() {
    this.readyState = FakeEventSource.CLOSED;
  }

  emit(type, data, id = '') {
    this.readyState = FakeEventSource.OPEN;
    const event = { type, data: JSON.stringify(data), lastEventId: id };
    for (const fn of this.listeners[type] ?? []) fn(event);
  }

  fail(readyState) {
    this.readyState = readyState;
    this.onerror?.({ type: 'error' });
  }
}
