// The API's docs page (/api/v1/docs): Swagger UI from static/vendor/, on the app's schema.
// A file of its own rather than an inline script, which the CSP forbids.
const root = document.getElementById("swagger-ui");
window.SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  domNode: root,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
});
