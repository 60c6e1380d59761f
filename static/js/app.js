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
