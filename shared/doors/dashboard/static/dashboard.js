// archdeploy dashboard: keeps #live up to date without reloading the page.
// The server renders the HTML; this only fetches the fresh fragment and swaps it in,
// keeping open <details> (long errors) open. It stops once the run has finished.
(function () {
  "use strict";
  function live() { return document.getElementById("live"); }
  function openKeys(root) {
    return Array.from(root.querySelectorAll("details[open][data-key]"), (d) => d.dataset.key);
  }
  async function refresh() {
    const el = live();
    if (!el || el.dataset.finished === "true") return;
    try {
      const answer = await fetch(el.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (answer.ok) {
        const keep = openKeys(el);
        const holder = document.createElement("div");
        holder.innerHTML = await answer.text();
        const fresh = holder.querySelector("#live");
        if (fresh) {
          keep.forEach((key) => {
            const d = fresh.querySelector(`details[data-key="${CSS.escape(key)}"]`);
            if (d) d.open = true;
          });
          el.replaceWith(fresh);
          document.title = fresh.dataset.title || document.title;
        }
      }
    } catch (e) {
      // the server may be restarting: try again on the next tick
    }
    const next = live();
    if (next && next.dataset.finished !== "true") {
      setTimeout(refresh, Number(next.dataset.every || 1000));
    }
  }
  const first = live();
  if (first) setTimeout(refresh, Number(first.dataset.every || 1000));
})();
