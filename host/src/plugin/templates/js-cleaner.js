// {{name}}: a kiln cleaner. It keeps every sample as it is: put your cleaning in `clean`.

{{prelude}}
export const cleaning = {
{{methods}}
  // One outcome per sample, in order: keep (with edited texts, undefined = unchanged) or drop.
  // A drop would be: { tag: "dropped", val: { code: "too-short", detail: "12 characters" } }
  clean(samples) {
    return samples.map(() => ({ tag: "keep", val: { instruction: undefined, response: undefined, notes: [] } }));
  },
};
