// Justified rows: each row's tiles share one height and fill the width exactly, every image
// at its own aspect ratio (the tile's --r). Without JavaScript the stylesheet's flexbox gives
// nearly the same rows; this makes them exact and keeps a short row from stretching.
function targetHeight() {
  return parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--row")) || 220;
}

export function layout(cards) {
  const tiles = [...cards.children].filter((el) => el.classList.contains("tile"));
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
  new ResizeObserver(schedule).observe(cards);
  new MutationObserver(schedule).observe(cards, { childList: true });
  document.addEventListener("htmx:afterSettle", schedule);
  layout(cards);
}
