// Keyboard shortcuts of the moderation pages. No framework and nothing inline:
// the page's Content-Security-Policy allows only this file to run.
(function () {
  "use strict";
  const page = document.body.dataset.page;

  function typing(event) {
    const t = event.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function submit(buttonId) {
    const button = document.getElementById(buttonId);
    if (button && !button.disabled) { button.click(); return true; }
    return false;
  }
  function toggleHelp() {
    const help = document.getElementById("help");
    if (help) { help.hidden = !help.hidden; }
  }
  const helpToggle = document.getElementById("help-toggle");
  if (helpToggle) { helpToggle.addEventListener("click", toggleHelp); }

  // ---------------------------------------------------------------- the queue
  let current = -1;
  function rows() { return Array.from(document.querySelectorAll("#queue tr.row")); }
  function move(step) {
    const all = rows();
    if (!all.length) { return; }
    if (current >= 0 && all[current]) { all[current].classList.remove("current"); }
    current = Math.max(0, Math.min(all.length - 1, current + step));
    all[current].classList.add("current");
    all[current].scrollIntoView({ block: "nearest" });
  }
  if (page === "queue") {
    const all = document.getElementById("select-all");
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("#queue input.pick").forEach(function (box) { box.checked = all.checked; });
      });
    }
    const bulkFilter = document.getElementById("bulk-filter");
    if (bulkFilter) {
      bulkFilter.addEventListener("click", function (event) {
        const decision = document.getElementById("bulk-decision").value;
        if (!window.confirm("Record '" + decision + "' for all " + bulkFilter.dataset.total + " pending items of this filter?")) {
          event.preventDefault();
        }
      });
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "Escape") {
      const help = document.getElementById("help");
      if (help && !help.hidden) { help.hidden = true; return; }
      if (typing(event)) { event.target.blur(); return; }
      if (page === "item") { window.location.href = document.getElementById("back").getAttribute("href"); }
      return;
    }
    if (typing(event)) { return; }
    if (event.key === "?") { toggleHelp(); event.preventDefault(); return; }
    let done = false;
    if (page === "queue") {
      const all = rows();
      switch (event.key) {
        case "j": move(1); done = true; break;
        case "k": move(-1); done = true; break;
        case "x":
          if (all[current]) { const box = all[current].querySelector("input.pick"); box.checked = !box.checked; }
          done = true; break;
        case "o": case "Enter":
          if (all[current]) { all[current].querySelector("button.open").click(); done = true; }
          break;
        case "n": done = submit("open-next"); break;
      }
    } else if (page === "item") {
      switch (event.key) {
        case "c": done = submit("confirm"); break;
        case "d": done = submit("dismiss"); break;
        case "u": done = submit("unsure"); break;
        case "s": done = submit("skip"); break;
        case "n": done = submit("open-next"); break;
      }
    }
    if (done) { event.preventDefault(); }
  });
})();
