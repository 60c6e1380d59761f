// The viewer: PhotoSwipe 5 (vendored in static/vendor/photoswipe) over the gallery grid.
// Each tile's link points at the image's detail page, so without JavaScript the same link
// works; with it the viewer opens, the address bar shows that page's URL while an image is
// viewed, and ←/→ walk the gallery in its current filter and order, loading older pages.
import PhotoSwipeLightbox from "../vendor/photoswipe/photoswipe-lightbox.esm.min.js";

const LINKS = "a.tile-link[data-pswp-src]";

function linkFor(pswp) {
  return pswp.currSlide?.data?.element ?? null;
}

function tileFor(link) {
  return link?.closest(".tile") ?? null;
}

function favoriteButton(link) {
  return tileFor(link)?.querySelector(".favorite button[type=submit]") ?? null;
}

function loadMore(pswp) {
  const more = document.querySelector("#cards .more[hx-get]");
  if (!more || more.dataset.loading || !window.htmx) return;
  more.dataset.loading = "1";
  window.htmx.ajax("GET", more.getAttribute("hx-get"), { target: more, swap: "outerHTML" }).then(() => {
    // The gallery grew: recount its images and fill the slide after the current one.
    if (!pswp.isDestroying && pswp.options.dataSource) {
      delete pswp.options.dataSource.items;
      pswp.refreshSlideContent(pswp.currIndex + 1);
    }
  });
}

function typing(event) {
  return event.target.closest?.("input, textarea, select");
}

// The collections panel: the generation's collections (gallery/collections_for.html#picker),
// fetched for the image in view; its forms swap themselves with htmx. Over a collection's page
// it says which collection that is, so that taking the image out of it takes its tile away.
function showCollections(pswp, panel) {
  const url = linkFor(pswp)?.dataset.collections;
  if (!url || !window.htmx) return;
  const collection = document.querySelector("#cards")?.dataset.collection;
  const query = collection ? `?${new URLSearchParams({ in_collection: collection })}` : "";
  // Asked for already: PhotoSwipe may tell of one move more than once, and a second answer,
  // landing after a choice made in the first one's forms, would throw that choice's answer away.
  if (panel.dataset.source === url + query) return;
  panel.dataset.source = url + query;
  window.htmx.ajax("GET", url + query, { target: panel, swap: "innerHTML" });
}

// The image in view left the grid (taken out of the collection whose page this is): the viewer
// moves on to the image that took its place, or the one before it at the end, and closes when
// none is left. PhotoSwipe counts the grid's links again, and its slides from here on (and the
// ones it preloaded) are drawn afresh.
function dropRemoved(pswp) {
  const link = linkFor(pswp);
  if (!link || link.isConnected || pswp.isDestroying || !pswp.options.dataSource) return;
  delete pswp.options.dataSource.items;
  const count = pswp.getNumItems();
  if (!count) {
    pswp.close();
    return;
  }
  const from = pswp.currIndex;
  for (let index = from - 1; index <= from + 3; index++) pswp.contentLoader.removeByIndex(index);
  if (from >= count) {
    pswp.goTo(count - 1);
    pswp.refreshSlideContent(count);
  } else {
    pswp.refreshSlideContent(from + 1);
    pswp.refreshSlideContent(from);
  }
}

function toggleCollections(pswp) {
  const panel = pswp.element?.querySelector(".pswp__collections");
  if (!panel) return;
  panel.hidden = !panel.hidden;
  if (!panel.hidden) {
    delete panel.dataset.source; // each opening shows them afresh
    showCollections(pswp, panel);
    panel.addEventListener("htmx:afterSettle", () => panel.querySelector("button, input")?.focus(), { once: true });
  }
}

export function startViewer() {
  const cards = document.querySelector("#cards");
  if (!cards) return;
  const galleryUrl = location.href;
  // An album link's page: the images only, none of the owner's controls, and no detail pages
  // to show in the address bar.
  const owner = cards.dataset.viewer !== "public";
  let pushed = false;

  const lightbox = new PhotoSwipeLightbox({
    gallery: "#cards",
    children: LINKS,
    pswpModule: () => import("../vendor/photoswipe/photoswipe.esm.min.js"),
    loop: false,
    bgOpacity: 1,
    showHideAnimationType: "fade",
    closeTitle: "Close (Esc)",
    zoomTitle: "Zoom",
    arrowPrevTitle: "Previous (←)",
    arrowNextTitle: "Next (→)",
    errorMsg: "This image could not be loaded.",
  });

  // In select mode a click selects instead of opening.
  lightbox.addFilter("clickedIndex", (index, event) => {
    const selecting = event.target.closest(".selecting");
    // A tile's checkbox toggles itself: cancelling its click would undo the tick.
    if (selecting && !event.target.closest(".tile-select")) event.preventDefault();
    return selecting ? -1 : index;
  });
  lightbox.on("beforeOpen", () => {
    if (document.querySelector(".gallery.selecting")) lightbox.pswp.close();
  });

  lightbox.on("afterInit", () => lightbox.pswp.element?.setAttribute("aria-label", "Image viewer"));
  document.addEventListener("htmx:afterSettle", () => {
    if (lightbox.pswp) dropRemoved(lightbox.pswp);
  });
  lightbox.on("uiRegister", () => {
    const pswp = lightbox.pswp;
    // Keys typed in the collections panel's name field are the field's, not the viewer's.
    pswp.on("keydown", (event) => { if (typing(event.originalEvent)) event.preventDefault(); });
    if (owner) registerOwnerControls(pswp);
    // The original file: the owner's always; an album's when its link allows downloads (its
    // tiles then carry data-download).
    pswp.ui.registerElement({
      name: "download",
      order: 9,
      isButton: true,
      tagName: "a",
      title: owner ? "Download (d)" : "Download original (d)",
      html: "⇩",
      className: "pswp__button--bg-text pswp__button--download",
      onInit: (element) => {
        element.setAttribute("aria-label", owner ? "Download (d)" : "Download original (d)");
        pswp.on("change", () => {
          const href = linkFor(pswp)?.dataset.download;
          element.hidden = !href;
          element.href = href ?? "#";
        });
      },
    });
    pswp.ui.registerElement({
      name: "info-button",
      order: 10,
      isButton: true,
      title: "Prompt and settings (i)",
      html: "Info",
      className: "pswp__button--bg-text pswp__button--info-button",
      onInit: (element) => {
        element.setAttribute("aria-label", "Info: prompt and settings (i)");
        // On an album page without its prompts there is nothing to show.
        pswp.on("change", () => { element.hidden = !owner && !linkFor(pswp)?.dataset.prompt; });
      },
      onClick: () => toggleInfo(pswp),
    });
    pswp.ui.registerElement({
      name: "info",
      order: 11,
      isButton: false,
      appendTo: "root",
      className: "pswp__info",
      onInit: (element) => {
        element.hidden = true;
        element.setAttribute("aria-live", "polite");
        pswp.on("change", () => {
          const link = linkFor(pswp);
          element.replaceChildren();
          if (!link) return;
          const prompt = document.createElement("p");
          prompt.textContent = link.dataset.prompt ?? "";
          element.append(prompt);
          if (!owner) return;
          const meta = document.createElement("p");
          meta.className = "pswp__meta";
          meta.textContent = link.dataset.meta ?? "";
          const open = document.createElement("a");
          open.href = link.href;
          open.textContent = "Open the details page";
          element.append(meta, open);
        });
      },
    });
  });

  function registerOwnerControls(pswp) {
    pswp.ui.registerElement({
      name: "favorite",
      order: 8,
      isButton: true,
      title: "Favourite (f)",
      html: "☆",
      className: "pswp__button--bg-text pswp__button--favorite",
      onInit: (element) => {
        const show = () => {
          const on = favoriteButton(linkFor(pswp))?.getAttribute("aria-pressed") === "true";
          element.textContent = on ? "★" : "☆";
          element.classList.toggle("is-on", on);
          element.setAttribute("aria-pressed", String(on));
          element.setAttribute("aria-label", on ? "Remove from favourites (f)" : "Add to favourites (f)");
        };
        pswp.on("change", show);
        pswp.on("favoriteChanged", show);
      },
      onClick: () => toggleFavorite(pswp),
    });
    pswp.ui.registerElement({
      name: "collections-button",
      order: 9.5,
      isButton: true,
      title: "Collections (c)",
      html: "▦",
      className: "pswp__button--bg-text pswp__button--collections",
      onInit: (element) => element.setAttribute("aria-label", "Collections: add it or take it out (c)"),
      onClick: () => toggleCollections(pswp),
    });
    pswp.ui.registerElement({
      name: "collections",
      order: 12,
      isButton: false,
      appendTo: "root",
      className: "pswp__collections",
      onInit: (element) => {
        element.hidden = true;
        element.setAttribute("role", "region");
        element.setAttribute("aria-label", "Collections of this image");
        pswp.on("change", () => { if (!element.hidden) showCollections(pswp, element); });
        // An answer that did not come: the next look asks again.
        for (const name of ["htmx:responseError", "htmx:sendError"]) {
          element.addEventListener(name, () => delete element.dataset.source);
        }
      },
    });
  }

  function toggleFavorite(pswp) {
    const button = favoriteButton(linkFor(pswp));
    if (!button) return;
    const form = button.form;
    form.addEventListener("htmx:afterSettle", () => pswp.dispatch("favoriteChanged"), { once: true });
    document.addEventListener("htmx:afterSettle", () => pswp.dispatch("favoriteChanged"), { once: true });
    form.requestSubmit(button);
  }

  function toggleInfo(pswp) {
    const info = pswp.element?.querySelector(".pswp__info");
    if (info) info.hidden = !info.hidden;
  }

  lightbox.on("change", () => {
    const pswp = lightbox.pswp;
    const link = linkFor(pswp);
    if (link && pushed) history.replaceState({ viewer: true }, "", link.href);
    if (pswp.currIndex >= pswp.getNumItems() - 3) loadMore(pswp);
  });
  lightbox.on("openingAnimationStart", () => {
    const link = linkFor(lightbox.pswp);
    if (link && owner) {
      history.pushState({ viewer: true }, "", link.href);
      pushed = true;
    }
  });
  // Once open, the keyboard focus moves into the viewer (a dialog), so that its keys work and
  // a screen reader is in it; it returns to the image's tile when the viewer closes.
  lightbox.on("openingAnimationEnd", () => {
    const element = lightbox.pswp.element;
    if (!element.hasAttribute("tabindex")) element.setAttribute("tabindex", "-1");
    element.focus({ preventScroll: true });
  });
  lightbox.on("close", () => {
    if (pushed) {
      pushed = false;
      history.back();
    }
  });
  addEventListener("popstate", () => {
    if (lightbox.pswp && pushed) {
      pushed = false;
      lightbox.pswp.close();
    }
    if (!lightbox.pswp && location.href !== galleryUrl && history.state?.viewer) location.reload();
  });

  document.addEventListener("keydown", (event) => {
    const pswp = lightbox.pswp;
    if (!pswp || event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
    if (event.key === "f" && owner) {
      toggleFavorite(pswp);
    } else if (event.key === "d") {
      const href = linkFor(pswp)?.dataset.download;
      if (href) location.assign(href);
    } else if (event.key === "c" && owner) {
      toggleCollections(pswp);
    } else if (event.key === "i") {
      toggleInfo(pswp);
    } else if (event.key === "?" && owner) {
      pswp.close();
      document.querySelector("#help")?.showModal();
    }
  });

  lightbox.init();
}
