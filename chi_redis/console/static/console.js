// Live refresh without a library: every element with data-refresh="URL" data-every="MS"
// has its content replaced by the HTML that URL serves, every MS milliseconds, while the
// page is visible.  A failed fetch keeps the last content and marks it stale.
"use strict";
(function () {
  function refresh(el) {
    if (document.hidden) return;
    fetch(el.dataset.refresh, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) { el.innerHTML = html; el.classList.remove("stale"); })
      .catch(function () { el.classList.add("stale"); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      var every = parseInt(el.dataset.every || "2000", 10);
      setInterval(function () { refresh(el); }, Math.max(every, 500));
    });
  });
})();
