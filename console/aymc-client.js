// Placeholder of the aymc-hub JavaScript client (PROTOCOL.md).
"use strict";
window.AymcClient = class AymcClient {
  constructor(url) {
    this.url = url;
  }
};
