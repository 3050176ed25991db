// Sluice log editor in JavaScript (componentize-js), world `editor-policy`:
// drops the prompt and completion text from every usage record unless its
// `keep-content` label says `yes`, and masks the values of chosen labels.
// Accounting fields (tokens, cost, status) cannot be edited.
//
// Config (`content-guard.toml`, handed to `init` as JSON):
//   mask_labels = ["user-email"]   # labels whose values become `[masked]`
const settings = { mask_labels: [] };

export const lifecycle = {
  init(config) {
    const given = JSON.parse(config);
    const unknown = Object.keys(given).filter((k) => !(k in settings));
    if (unknown.length > 0) throw `content-guard config: unknown field(s) ${unknown.join(", ")}`;
    Object.assign(settings, given);
  },
};

export const editor = {
  edit(rec) {
    const labels = rec.labels();
    if (!labels.some((l) => l.name === "keep-content" && l.value === "yes")) {
      rec.setPrompt(undefined);
      rec.setCompletion(undefined);
    }
    const mask = settings.mask_labels;
    if (labels.some((l) => mask.includes(l.name))) {
      rec.setLabels(labels.map((l) => (mask.includes(l.name) ? { name: l.name, value: "[masked]" } : l)));
    }
    return true;
  },
};
