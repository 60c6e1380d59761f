// The gallery tab says what is on its way: its title counts the images being made and flashes
// when one is done or has failed, and, if asked for, a browser notification says so while the
// tab is in the background. Everything comes from the cards the 2 s refresh swaps in.
const FINISHED = new Set(["done", "failed"]);
const STORED = "notify";
const TITLE = document.title;

const statuses = new Map();
let flashTimer = null;

function countTitle() {
  const pending = Number(document.querySelector("#counts")?.dataset.pending || 0);
  return pending ? `(${pending}) ${TITLE}` : TITLE;
}

function showCount() {
  if (flashTimer === null) document.title = countTitle();
}

// The news and the count take turns in the title: for a few seconds in view, and in the
// background until the tab is looked at again.
function flash(text) {
  clearInterval(flashTimer);
  let turn = 0;
  const step = () => {
    turn += 1;
    if (turn % 2 === 0 && turn >= 6 && !document.hidden) {
      clearInterval(flashTimer);
      flashTimer = null;
      showCount();
      return;
    }
    document.title = turn % 2 ? text : countTitle();
  };
  flashTimer = setInterval(step, 1000);
  step();
}

function wanted() {
  try {
    return localStorage.getItem(STORED) === "1";
  } catch {
    return false; // private mode
  }
}

function notifying() {
  return "Notification" in window && Notification.permission === "granted" && wanted();
}

// A click on the notification brings the tab back with the image open (the failure in view).
function openCard(id) {
  window.focus();
  const card = document.getElementById(id);
  if (!card) return;
  const link = card.querySelector("a.tile-link");
  if (link) link.click();
  else card.scrollIntoView({ block: "center" });
}

function notify(card) {
  const done = card.dataset.status === "done";
  const notice = new Notification(done ? "Your image is done" : "Your image failed", {
    body: card.dataset.promptStart,
    tag: card.id,
    icon: card.querySelector("img")?.src,
  });
  notice.addEventListener("click", () => {
    openCard(card.id);
    notice.close();
  });
}

function announce(cards) {
  const failed = cards.filter((card) => card.dataset.status === "failed");
  const first = cards[0].dataset.promptStart;
  if (failed.length === cards.length) flash(`✕ Failed — ${first}`);
  else if (cards.length === 1) flash(`✓ Done — ${first}`);
  else flash(`✓ ${cards.length} finished — ${first}`);
  if (document.hidden && notifying()) for (const card of cards.slice(0, 3)) notify(card);
}

// A card that was on its way and now is done or failed has just finished; a card that comes
// in finished (the next page of the gallery) has not.
function scan() {
  const finished = [];
  for (const card of document.querySelectorAll("article.tile[data-status]")) {
    const before = statuses.get(card.id);
    const now = card.dataset.status;
    if (before && !FINISHED.has(before) && FINISHED.has(now)) finished.push(card);
    statuses.set(card.id, now);
  }
  showCount();
  if (finished.length) announce(finished);
}

function showToggle(button) {
  const on = notifying();
  const blocked = Notification.permission === "denied";
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Notifications on" : blocked ? "Notifications blocked" : "Notify me";
  button.title = blocked
    ? "This browser blocks notifications from this site: allow them in its site settings"
    : "A browser notification when an image is done while this tab is in the background";
}

// Permission is asked for only when the button is clicked, never on its own.
function wireToggle() {
  const button = document.querySelector("[data-notify-toggle]");
  if (!button || !("Notification" in window)) return;
  button.hidden = false;
  showToggle(button);
  button.addEventListener("click", async () => {
    try {
      if (notifying()) localStorage.removeItem(STORED);
      else if ((await Notification.requestPermission()) === "granted") localStorage.setItem(STORED, "1");
    } catch {
      // Private mode: nothing can be remembered, so nothing is switched on.
    }
    showToggle(button);
  });
}

export function startNotices() {
  const gallery = document.querySelector(".gallery");
  if (!gallery) return;
  wireToggle();
  new MutationObserver(scan).observe(gallery, { childList: true, subtree: true });
  scan();
}
