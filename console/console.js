// Placeholder script of the aymc-hub console.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  if (status && typeof window.AymcClient === "function") {
    status.textContent = "aymc-client.js loaded.";
  }
});
