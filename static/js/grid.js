// Justified rows: each row's tiles share one height and fill the width exactly, every image
// at its own aspect ratio (the tile's --r). Without JavaScript the stylesheet's flexbox gives
// nearly the same rows; this makes them exact and keeps a short row from stretching.
function targetHeight() {
  return parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--row")) || 220;
}

// Posts: the variations of one form post (tiles next to each other with one data-post) show as
// one tile, the newest, with a "+N" button that unfolds the others in place (and folds them
// again). The viewer walks through all of them either way; in select mode all show, so each
// can be picked. Without JavaScript every variation is a tile of its own.
const unfolded = new Set();

function groupPosts(cards) {
  const tiles = [...cards.children].filter((el) => el.classList.contains("tile"));
  for (let i = 0; i < tiles.length; ) {
    const post = tiles[i].dataset.post;
    let end = i + 1;
    while (post && end < tiles.length && tiles[end].dataset.post === post) end++;
    const members = tiles.slice(i, end);
    const open = unfolded.has(post);
    members.forEach((tile, k) => {
      const lead = k === 0 && members.length > 1;
      tile.classList.toggle("tile--post", members.length > 1);
      tile.classList.toggle("tile--folded", k > 0 && !open);
      let button = tile.querySelector(":scope > .tile-post");
      if (!lead) {
        button?.remove();
        return;
      }
      if (!button) {
        button = document.createElement("button");
        button.type = "button";
        button.className = "tile-post";
        tile.append(button);
      }
      const n = members.length;
      const hidden = document.createElement("span");
      hidden.className = "visually-hidden";
      hidden.textContent = open ? ` the ${n} variations` : ` more: show all ${n} variations`;
      button.replaceChildren(open ? "Fold" : `+${n - 1}`, hidden);
      button.dataset.post = post;
      button.setAttribute("aria-expanded", String(open));
      button.title = open ? `Fold the ${n} variations` : `Show all ${n} variations`;
    });
    i = end;
  }
}

export function layout(cards) {
  groupPosts(cards);
  const tiles = [...cards.children].filter(
    (el) => el.classList.contains("tile") && getComputedStyle(el).display !== "none",
  );
  if (!tiles.length) return;
  const width = cards.clientWidth;
  const gap = parseFloat(getComputedStyle(cards).columnGap) || 0;
  const target = targetHeight();
  let row = [];
  let sum = 0;
  const place = (items, height) => {
    let used = 0;
    items.forEach(({ tile, ratio }, i) => {
      const last = i === items.length - 1;
      const w = last && height < target ? width - used - gap * i : Math.floor(ratio * height);
      tile.style.flex = "0 0 auto";
      tile.style.width = `${Math.max(1, Math.min(w, width))}px`;
      tile.style.height = `${Math.floor(height)}px`;
      used += w;
    });
  };
  for (const tile of tiles) {
    const ratio = parseFloat(getComputedStyle(tile).getPropertyValue("--r")) || 1;
    row.push({ tile, ratio });
    sum += ratio;
    const natural = sum * target + gap * (row.length - 1);
    if (natural >= width) {
      place(row, (width - gap * (row.length - 1)) / sum);
      row = [];
      sum = 0;
    }
  }
  // The last row keeps the target height rather than stretching across.
  if (row.length) place(row, Math.min(target, (width - gap * (row.length - 1)) / sum));
}

export function startGrid() {
  const cards = document.querySelector("#cards");
  if (!cards) return;
  let frame = 0;
  const schedule = () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => layout(cards));
  };
  cards.addEventListener("click", (event) => {
    const button = event.target.closest(".tile-post");
    if (!button) return;
    const post = button.dataset.post;
    if (unfolded.has(post)) unfolded.delete(post);
    else unfolded.add(post);
    layout(cards);
    button.focus();
  });
  // Select mode shows every variation: the gallery's class changes, so lay out again.
  new MutationObserver(schedule).observe(cards.closest(".gallery") ?? cards, {
    attributes: true,
    attributeFilter: ["class"],
  });
  new ResizeObserver(schedule).observe(cards);
  new MutationObserver(schedule).observe(cards, { childList: true });
  document.addEventListener("htmx:afterSettle", schedule);
  layout(cards);
}
