// Small behaviours that htmx does not cover. Every page works without them.
import { startGrid } from "./grid.js";
import { startNotices } from "./notify.js";
import { startViewer } from "./viewer.js";

const root = document.documentElement;

// Copy buttons: data-copy="#selector" copies that element's text, data-copy-value its value.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy], [data-copy-value]");
  if (!button) return;
  const text = button.dataset.copyValue ?? document.querySelector(button.dataset.copy)?.textContent ?? "";
  try {
    await navigator.clipboard.writeText(text.trim());
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  } catch {
    button.textContent = "Select and copy";
  }
});

// Theme: the toggle switches between light and dark and remembers the choice in this browser.
function currentTheme() {
  return root.dataset.theme || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
}
function showTheme() {
  const dark = currentTheme() === "dark";
  for (const button of document.querySelectorAll("[data-theme-toggle]")) {
    button.setAttribute("aria-pressed", String(dark));
    button.textContent = dark ? "Light theme" : "Dark theme";
  }
}
document.addEventListener("click", (event) => {
  if (!event.target.closest("[data-theme-toggle]")) return;
  const next = currentTheme() === "dark" ? "light" : "dark";
  root.dataset.theme = next;
  try { localStorage.setItem("theme", next); } catch { /* private mode */ }
  showTheme();
});
showTheme();

// The composer: a counter up to the prompt's limit, Ctrl/Cmd+Enter submits.
function wireComposer() {
  const prompt = document.querySelector("#generate-form textarea");
  if (!prompt || prompt.dataset.wired) return;
  prompt.dataset.wired = "1";
  const counter = document.querySelector("#prompt-counter");
  const max = Number(prompt.getAttribute("maxlength")) || 20000;
  const count = () => {
    if (counter) counter.textContent = `${prompt.value.length.toLocaleString()} / ${max.toLocaleString()}`;
  };
  prompt.addEventListener("input", count);
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      prompt.form.requestSubmit();
    }
  });
  count();
}

// Filters apply on change; the Filter button is for browsers without JavaScript.
document.addEventListener("change", (event) => {
  const form = event.target.closest("form.filters");
  if (form && event.target.type !== "search") form.requestSubmit();
});
let searchTimer;
document.addEventListener("input", (event) => {
  const form = event.target.closest("form.filters");
  if (!form || event.target.type !== "search") return;
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => form.requestSubmit(), 400);
});

// Select mode: a bar with "N selected", select all, shift-click ranges, Esc clears.
const gallery = () => document.querySelector(".gallery");
function boxes() { return [...document.querySelectorAll(".tile-select input")]; }
function showSelection() {
  const section = gallery();
  if (!section) return;
  const count = boxes().filter((box) => box.checked).length;
  const label = section.querySelector("#bulk-count");
  if (label) label.textContent = count === 1 ? "1 selected" : `${count} selected`;
  for (const button of section.querySelectorAll("#bulk-form button[name=action]")) button.disabled = count === 0;
}
function setSelecting(on) {
  const section = gallery();
  if (!section) return;
  section.classList.toggle("selecting", on);
  section.querySelector("[data-select-toggle]")?.setAttribute("aria-pressed", String(on));
  if (!on) {
    for (const box of boxes()) box.checked = false;
    closePopovers();
  }
  showSelection();
}

// The select bar's menus (<details data-popover>): one open at a time, closed by a click
// elsewhere, by Esc, and once an action in one is chosen. A fold that shows as a row on a wide
// screen (its summary hidden) is no menu there and stays open.
function isPopover(details) {
  const summary = details.querySelector(":scope > summary");
  return summary && getComputedStyle(summary).display !== "none";
}
function closePopovers(except = null) {
  for (const details of document.querySelectorAll("details[data-popover][open]")) {
    if (details !== except && isPopover(details)) details.open = false;
  }
}
document.addEventListener("click", (event) => {
  const inside = event.target.closest("details[data-popover]");
  closePopovers(inside);
  // Closed after the click, so that the chosen button still submits its form.
  if (inside && event.target.closest("button[type=submit]") && isPopover(inside)) {
    setTimeout(() => { inside.open = false; });
  }
});
let lastBox = null;
document.addEventListener("click", (event) => {
  if (event.target.closest("[data-select-toggle]")) {
    setSelecting(!gallery().classList.contains("selecting"));
    return;
  }
  if (event.target.closest("[data-select-all]")) {
    for (const box of boxes()) box.checked = true;
    showSelection();
    return;
  }
  const box = event.target.closest(".tile-select input");
  if (box) {
    if (event.shiftKey && lastBox && lastBox !== box) {
      const all = boxes();
      const [from, to] = [all.indexOf(lastBox), all.indexOf(box)].sort((a, b) => a - b);
      for (const other of all.slice(from, to + 1)) other.checked = box.checked;
    }
    lastBox = box;
    showSelection();
    return;
  }
  // In select mode a click on an image selects it instead of opening it.
  const tile = event.target.closest(".selecting .tile");
  if (tile && !event.target.closest("form")) {
    event.preventDefault();
    const input = tile.querySelector(".tile-select input");
    if (input) { input.checked = !input.checked; lastBox = input; showSelection(); }
    return;
  }
  // On touch screens the "…" button shows a tile's actions.
  const more = event.target.closest(".tile-more");
  if (more) {
    const open = more.closest(".tile").classList.toggle("tile--open");
    more.setAttribute("aria-expanded", String(open));
  }
});

// Keys: ? for help, s for select mode, Esc clears the selection (the viewer has its own keys).
function typing(event) {
  return event.target.closest("input, textarea, select, [contenteditable]");
}
document.addEventListener("keydown", (event) => {
  if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.querySelector(".pswp--open")) return;
  if (event.key === "?") {
    event.preventDefault();
    document.querySelector("#help")?.showModal();
  } else if (event.key === "s" && gallery()) {
    setSelecting(!gallery().classList.contains("selecting"));
  } else if (event.key === "Escape") {
    // An open menu first, then select mode.
    const open = [...document.querySelectorAll("details[data-popover][open]")].filter(isPopover);
    if (open.length) {
      closePopovers();
      open[0].querySelector("summary").focus();
    } else if (gallery()?.classList.contains("selecting")) {
      setSelecting(false);
    }
  }
});

// The menu is open in the markup (so that it shows without JavaScript); on a narrow screen
// it folds (app.css folds it at the same width).
const narrowMenu = matchMedia("(max-width: 1080px)");
const narrow = matchMedia("(max-width: 760px)");
function fitMenu() {
  const menu = document.querySelector("[data-menu]");
  if (menu) menu.open = !narrowMenu.matches;
  fitFolds(true);
}
// The composer's settings and the filters fold on a phone (they stay open if a filter is on).
function fitFolds(all) {
  for (const fold of document.querySelectorAll("[data-wide-open]")) {
    if (!all && fold.dataset.fitted) continue;
    fold.open = !narrow.matches || fold.dataset.keepOpen === "1";
    fold.dataset.fitted = "1";
  }
}
narrow.addEventListener("change", fitMenu);
narrowMenu.addEventListener("change", fitMenu);
fitMenu();

// A link to something inside a folded <details> (a collection's #link-N) unfolds it.
function unfoldTarget() {
  const id = decodeURIComponent(location.hash.slice(1));
  const target = id ? document.getElementById(id) : null;
  target?.closest("details")?.setAttribute("open", "");
}
addEventListener("hashchange", unfoldTarget);
unfoldTarget();

function wire() {
  fitFolds(false);
  wireComposer();
  showSelection();
  showTheme();
}
document.addEventListener("htmx:afterSettle", wire);
wire();
startGrid();
startViewer();
startNotices();
