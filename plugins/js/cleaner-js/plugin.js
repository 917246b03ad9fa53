// cleaner-js: kiln's reference cleaner (`plugins/rust/cleaner-basic`) ported to plain JavaScript.
//
// World `cleaner` (WIT interface `kiln:stages/cleaning`), built with componentize-js. In order,
// for every sample:
//   1. whitespace and control-character normalisation;
//   2. truncation of instruction and response at leaked prompt markers ("Instruction:", ...);
//   3. length bounds (in characters, i.e. Unicode scalar values, after cleaning);
//   4. repetition: the ratio of the response's word n-grams that repeat an earlier one;
//   5. near-duplicates, against the reference (seed) instructions and against the instructions
//      kept earlier in the same batch: Jaccard similarity of word n-gram sets.
// Every drop carries a stable code and a detail with the values that made it drop. The texts
// (codes, details, error messages) are those of cleaner-basic, notes are keyed `cleaner-js.*`.
//
// No npm dependencies: everything below is standard JavaScript (ES2022).
//
// Known differences from cleaner-basic (none of them shows on kiln's data/samples.jsonl):
// - `reference_file` is refused: componentize-js gives a JavaScript component no file system
//   API. Put the reference instructions in `reference_instructions` instead.
// - A text that begins with U+FEFF (byte order mark) reaches this plugin without it:
//   componentize-js decodes the host's strings with a default TextDecoder, which strips a
//   leading BOM, and the plugin cannot undo that. With `normalize` on (the default) the BOM
//   would be removed anyway; the only effect is that such a text, if cleaning changes nothing
//   else, keeps its BOM in the host's copy. With `normalize` off, its length counts one
//   character less and a truncated text loses the BOM.
// - Capital sigma at the end of a word is lower-cased by an approximate rule (see `lowerWord`).
// - Configuration errors read like serde's but lack its " at line L column C".

const PLUGIN = "cleaner-js";
const WIT_VERSION = "0.1.0";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

// Defaults, exactly those of cleaner-basic. Every key is optional in the plugin's JSON config.
const DEFAULTS = Object.freeze({
  // Normalise whitespace and control characters.
  normalize: true,
  // Text after any of these markers is cut off (a base model running on into the next item).
  leak_markers: ["Instruction:", "Response:", "### ", "\nUser:", "\nAssistant:", "<start_of_turn>", "<end_of_turn>", "<|"],
  // Length bounds in characters, after cleaning.
  min_instruction_chars: 10,
  max_instruction_chars: 500,
  min_response_chars: 2,
  max_response_chars: 4000,
  // Word n-gram size for the repetition measure, and the highest repeated n-gram ratio kept.
  repetition_ngram: 3,
  max_repetition: 0.3,
  // Word n-gram size for near-duplicate detection, and the Jaccard similarity that drops.
  dedup_ngram: 3,
  near_duplicate_threshold: 0.7,
  // Reference instructions (e.g. the seed set), compared against every instruction.
  reference_instructions: [],
  // A JSON-lines file of reference instructions. cleaner-basic reads it from its read-only data
  // folder; componentize-js gives a JavaScript component no file system API, so cleaner-js
  // refuses this key (see `parseConfig`).
  reference_file: null,
});

// The type of each key, as cleaner-basic's Rust struct declares it.
const KEY_TYPES = {
  normalize: "bool",
  leak_markers: "strings",
  min_instruction_chars: "usize",
  max_instruction_chars: "usize",
  min_response_chars: "usize",
  max_response_chars: "usize",
  repetition_ngram: "usize",
  max_repetition: "f64",
  dedup_ngram: "usize",
  near_duplicate_threshold: "f64",
  reference_instructions: "strings",
  reference_file: "optional-string",
};

// cleaner-basic runs as wasm32, where a Rust usize is 32 bits wide.
const USIZE_MAX = 2 ** 32 - 1;

/** A configuration error: becomes the WIT `plugin-error` (see `configure`). */
class ConfigError extends Error {}

const configError = (message) => new ConfigError(`${PLUGIN} config: ${message}`);

/**
 * serde's wording for a JSON value of the wrong type ("string \"a\"", "integer `1`", ...).
 * `floatText` is set when the number was written with a fraction or an exponent.
 */
function describeValue(v, floatText) {
  if (v === null) return "null";
  if (typeof v === "boolean") return `boolean \`${v}\``;
  if (typeof v === "string") return `string ${JSON.stringify(v)}`;
  if (Array.isArray(v)) return "sequence";
  if (typeof v === "number") {
    if (Number.isInteger(v) && !floatText) return `integer \`${v}\``;
    // Rust prints a float with a decimal point: 100.0, 1.5.
    const s = rustFloat(v);
    return `floating point \`${/[.eE]|inf|NaN/.test(s) ? s : s + ".0"}\``;
  }
  return "map";
}

/** Check one value against its declared type; returns it (as the plugin uses it). */
function checkValue(key, type, v, floatText) {
  const wrong = (expected) => configError(`invalid type: ${describeValue(v, floatText)}, expected ${expected}`);
  switch (type) {
    case "bool":
      if (typeof v !== "boolean") throw wrong("a boolean");
      return v;
    case "f64":
      if (typeof v !== "number") throw wrong("f64");
      // JSON.parse turns a number too large for a double into Infinity; serde_json refuses it.
      if (!Number.isFinite(v)) throw configError(`${key}: number out of range`);
      return v;
    case "usize":
      if (typeof v !== "number" || !Number.isInteger(v) || floatText) throw wrong("usize");
      if (v < 0 || v > USIZE_MAX) throw configError(`invalid value: integer \`${v}\`, expected usize`);
      return v;
    case "strings":
      if (!Array.isArray(v)) throw wrong("a sequence");
      for (const item of v) {
        if (typeof item !== "string") throw configError(`invalid type: ${describeValue(item, false)}, expected a string`);
      }
      return [...v];
    case "optional-string":
      if (v !== null && typeof v !== "string") throw wrong("a string");
      return v;
  }
  throw new Error(`unknown type ${type}`);
}

/**
 * Parse and validate a configuration (a JSON object; blank means `{}`). Throws a ConfigError
 * with cleaner-basic's message, prefixed "cleaner-js config: ".
 *
 * Differences from serde_json that cleaner-basic's messages do not show: no "at line L column
 * C" suffix; with duplicate keys the last one counts silently (as it does in cleaner-basic).
 */
function parseConfig(json) {
  const text = rustTrim(json) === "" ? "{}" : json;
  // Numbers written as floats ("1.0", "1e2") are not a usize for serde, but JSON.parse gives 1
  // and 100. Where the engine passes the reviver each number's source text (ES2025 "JSON.parse
  // source text access"), note the keys whose number was written as a float, per holder object.
  const floatKeys = new WeakMap(); // object -> Set of its keys holding float-written numbers
  let raw;
  try {
    raw = JSON.parse(text, function (key, value, context) {
      if (typeof value === "number" && /[.eE]/.test(context?.source ?? "")) {
        if (!floatKeys.has(this)) floatKeys.set(this, new Set());
        floatKeys.get(this).add(key);
      }
      return value;
    });
  } catch (e) {
    throw configError(`invalid JSON: ${e.message}`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw configError(`invalid type: ${describeValue(raw, false)}, expected struct Config`);
  }
  const cfg = { ...DEFAULTS };
  for (const [key, value] of Object.entries(raw)) {
    const type = KEY_TYPES[key];
    if (type === undefined) {
      const expected = Object.keys(KEY_TYPES).map((k) => `\`${k}\``).join(", ");
      throw configError(`unknown field \`${key}\`, expected one of ${expected}`);
    }
    cfg[key] = checkValue(key, type, value, floatKeys.get(raw)?.has(key) ?? false);
  }
  if (cfg.min_instruction_chars > cfg.max_instruction_chars) {
    throw configError(`min_instruction_chars (${cfg.min_instruction_chars}) exceeds max_instruction_chars (${cfg.max_instruction_chars})`);
  }
  if (cfg.min_response_chars > cfg.max_response_chars) {
    throw configError(`min_response_chars (${cfg.min_response_chars}) exceeds max_response_chars (${cfg.max_response_chars})`);
  }
  for (const name of ["max_repetition", "near_duplicate_threshold"]) {
    const v = cfg[name];
    if (!(v >= 0 && v <= 1)) throw configError(`${name} must be within [0, 1], got ${rustFloat(v)}`);
  }
  if (cfg.repetition_ngram === 0 || cfg.dedup_ngram === 0) {
    throw configError("n-gram sizes must be at least 1");
  }
  if (cfg.reference_file !== null) {
    throw configError(
      `reference_file ("${cfg.reference_file}") is not supported by cleaner-js: a componentize-js plugin ` +
        "has no file access; list the reference instructions in reference_instructions instead",
    );
  }
  return cfg;
}

// ---------------------------------------------------------------------------------------------
// Number formatting as Rust prints it
// ---------------------------------------------------------------------------------------------

/** Rust's `{}` for an f64: the shortest round-trip digits, never in exponent notation. */
function rustFloat(x) {
  if (Object.is(x, -0)) return "-0";
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "NaN" : x > 0 ? "inf" : "-inf";
  const s = String(x);
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(s);
  if (!m) return s; // already plain, e.g. "0.3", "2"
  const [, sign, lead, frac = "", expText] = m;
  const digits = lead + frac;
  const exp = Number(expText); // the decimal point goes after digit 1 + exp
  if (exp >= 0) return sign + digits.padEnd(exp + 1, "0");
  return sign + "0." + "0".repeat(-exp - 1) + digits;
}

/**
 * Rust's `{:.3}` for an f64 in [0, 1]. Number.prototype.toFixed rounds an exact tie up, Rust to
 * the even digit: they differ on exact ties, which for 3 decimals are the odd multiples of 1/16
 * (0.0625 is "0.062" in Rust, "0.063" from toFixed).
 */
function fixed3(x) {
  const scaled = x * 1000; // exact for x = odd / 16
  if (Number.isInteger(x * 16) && scaled - Math.floor(scaled) === 0.5) {
    const low = Math.floor(scaled);
    const n = low % 2 === 0 ? low : low + 1;
    return (n / 1000).toFixed(3);
  }
  return x.toFixed(3);
}

// ---------------------------------------------------------------------------------------------
// Text helpers (kiln-text)
// ---------------------------------------------------------------------------------------------

// componentize-js's engine (SpiderMonkey in StarlingMonkey) is built without ICU: regular
// expressions have no Unicode property escapes (\p{...}), strings no normalize(), there is no
// Intl. The character classes the cleaner needs (Rust's is_whitespace, is_control and
// is_alphanumeric) are therefore written out, as Rust's std defines them. The engine also
// interprets JavaScript rather than compiling it, so the work on long texts is left to its
// regular expression matcher wherever that reads well.

/** Rust's char::is_whitespace: the Unicode White_Space property (JavaScript's \s differs: it
 * includes U+FEFF and lacks U+0085). */
function isWhiteSpace(cp) {
  return (
    (cp >= 0x09 && cp <= 0x0d) || cp === 0x20 || cp === 0x85 || cp === 0xa0 || cp === 0x1680 ||
    (cp >= 0x2000 && cp <= 0x200a) || cp === 0x2028 || cp === 0x2029 || cp === 0x202f ||
    cp === 0x205f || cp === 0x3000
  );
}

/** Rust's str::trim: strips White_Space characters at both ends. */
function rustTrim(s) {
  let start = 0;
  let end = s.length;
  // Every White_Space character is in the Basic Multilingual Plane: UTF-16 code units suffice.
  while (start < end && isWhiteSpace(s.charCodeAt(start))) start++;
  while (end > start && isWhiteSpace(s.charCodeAt(end - 1))) end--;
  return s.slice(start, end);
}

/**
 * Normalise whitespace and control characters: CR LF and CR become LF, tabs and other
 * horizontal whitespace become one space, other control characters (and zero-width characters)
 * are removed, runs of spaces collapse, lines are trimmed at the end, more than one blank line
 * in a row collapses to one, and the whole text is trimmed. Leading indentation of inner lines
 * is kept (one space). Note that U+0085, U+2028 and U+2029 are whitespace, not line breaks.
 *
 * Written as a chain of regular expression replacements: this engine interprets JavaScript, and
 * its regular expression matcher is much faster than a loop over the characters.
 */
function normalizeWhitespace(text) {
  // Most texts are already normal: printable ASCII and line feeds, no double space, no space
  // before a line feed, no run of three line feeds, nothing to trim.
  if (!/[^\x20-\x7E\n]|  | \n|\n\n\n|^[ \n]|[ \n]$/.test(text)) return text;
  return (
    text
      .replace(/\r\n?/g, "\n")
      // Zero-width characters, and control characters (Cc) that are not whitespace: removed.
      .replace(/[\u200B-\u200D\uFEFF\0-\x08\x0E-\x1F\x7F-\x84\x86-\x9F]/g, "")
      // The other White_Space characters (see isWhiteSpace): one space each, runs collapsed.
      .replace(/[\t\v\f \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+/g, " ")
      // Spaces at line ends; then blank lines beyond the first in a row.
      .replace(/ \n/g, "\n")
      .replace(/\n{3,}/g, "\n\n")
      // The whole text trimmed (only spaces and line feeds are left to trim).
      .replace(/^[ \n]+|[ \n]+$/g, "")
  );
}

/** The length of a text in Unicode scalar values (Rust's chars().count()): UTF-16 units less
 * one per surrogate pair (a well-formed string, as every string from the host is). */
function charCount(s) {
  const lowSurrogates = s.match(/[\uDC00-\uDFFF]/g);
  return s.length - (lowSurrogates === null ? 0 : lowSurrogates.length);
}

/**
 * Cut a text at the first occurrence of any (non-empty) marker: [text before it, the marker],
 * or [text, null]. The earliest occurrence in the text wins; at equal positions, the marker
 * listed first.
 */
function cutAtMarkers(text, markers) {
  let bestPos = -1;
  let bestMarker = null;
  for (const m of markers) {
    if (m === "") continue;
    const pos = text.indexOf(m);
    if (pos >= 0 && (bestPos < 0 || pos < bestPos)) {
      bestPos = pos;
      bestMarker = m;
    }
  }
  return bestMarker === null ? [text, null] : [text.slice(0, bestPos), bestMarker];
}

/**
 * Lower-cased word tokens, the unit of every n-gram measure: maximal runs of characters for
 * which Rust's char::is_alphanumeric holds (`WORD`, built from the table at the end of the file).
 */
function words(text) {
  // ASCII text (the usual case) takes a shorter way to the same words.
  if (!/[^\0-\x7F]/.test(text)) return text.toLowerCase().match(/[a-z0-9]+/g) ?? [];
  return (text.match(WORD) ?? []).map(lowerWord);
}

/**
 * Rust's str::to_lowercase of a word. toLowerCase applies the same full mappings (İ -> i̇, the
 * engine's Unicode tables against Rust's), but this engine maps a capital sigma to σ always, where
 * Rust writes ς at the end of a word (Final_Sigma: a cased letter before it, none after it).
 * That rule is applied here with "cased" read as "has a case mapping" and without skipping
 * case-ignorable characters: it differs from Rust only for a Σ next to a modifier letter or
 * combining mark, or next to one of the few letters that are cased without a case mapping
 * (ª, º, 𝐀 and the other mathematical letters, ...).
 */
function lowerWord(word) {
  if (!word.includes("Σ")) return word.toLowerCase();
  const chars = [...word];
  const cased = (c) => c !== undefined && (c.toLowerCase() !== c || c.toUpperCase() !== c);
  return chars
    .map((c, i) => (c !== "Σ" ? c.toLowerCase() : cased(chars[i - 1]) && !cased(chars[i + 1]) ? "ς" : "σ"))
    .join("");
}

// An n-gram is its words joined by a character no word contains (a space is not alphanumeric,
// and lower-casing never produces one), so equal strings are equal word lists. cleaner-basic
// compares 64-bit hashes of the n-grams instead (a collision is negligible); here the sets hold
// the n-grams themselves, so the Jaccard similarities are exact.
const JOIN = " ";

/**
 * The word n-grams of a text, in order (n >= 1). A text shorter than n words yields its whole
 * word list as one gram, so that short texts can still be compared; no words, no grams.
 */
function ngrams(text, n) {
  return ngramsOf(words(text), n);
}

/** `ngrams` of a word list. */
function ngramsOf(w, n) {
  if (w.length === 0) return [];
  if (w.length < n) return [w.join(JOIN)];
  const grams = [];
  for (let i = 0; i + n <= w.length; i++) grams.push(w.slice(i, i + n).join(JOIN));
  return grams;
}

/**
 * Fraction of a text's word n-grams that repeat an earlier n-gram of the same text: 0 without
 * repetition, close to 1 for a text stuck in a loop. Texts of at most n words have ratio 0.
 */
function repeatedNgramRatio(text, n) {
  const w = words(text);
  if (w.length <= n) return 0;
  const grams = ngramsOf(w, n);
  const distinct = new Set(grams).size;
  return (grams.length - distinct) / grams.length;
}

/**
 * Texts' word n-gram sets, for near-duplicate search by exact Jaccard similarity
 * |A ∩ B| / |A ∪ B|. Only texts sharing at least one n-gram with the query are compared (an
 * inverted index from n-gram to texts); the others have similarity 0.
 */
class NearDupIndex {
  constructor(n) {
    this.n = n;
    this.labels = [];
    this.sets = []; // one Set of n-grams per text
    this.postings = new Map(); // n-gram -> indices of the texts holding it
  }

  /** The n-gram set of a text, with this index's n. */
  gramSet(text) {
    return new Set(ngrams(text, this.n));
  }

  /** Add a text's n-gram set under a label (a sample id, "reference #3"). */
  insertSet(label, set) {
    const t = this.labels.length;
    this.labels.push(label);
    this.sets.push(set);
    for (const g of set) {
      const list = this.postings.get(g);
      if (list) list.push(t);
      else this.postings.set(g, [t]);
    }
  }

  /**
   * The most similar text sharing an n-gram with `set`, if its similarity is at least
   * `threshold`: { label, sim }, or null. Among equally similar texts, the one added first.
   */
  mostSimilarAtLeast(set, threshold) {
    if (set.size === 0 || this.sets.length === 0) return null;
    // Two bounds keep a search short without changing its answer (as in cleaner-basic): a text
    // with similarity s >= threshold shares at least threshold * |set| n-grams with `set`, so
    // it holds one of any |set| - need + 1 of them, and only the postings of that many of the
    // rarest n-grams are read; and a text whose size alone keeps its similarity under the
    // threshold is not compared.
    let need = 1;
    if (threshold > 0) need = Math.min(Math.max(Math.ceil(threshold * set.size * (1 - 1e-12)), 1), set.size);
    const lists = [...set].map((g) => this.postings.get(g) ?? []).sort((a, b) => a.length - b.length).slice(0, set.size - need + 1);
    // A text y reaches the threshold only if it shares at least
    // threshold / (1 + threshold) * (|set| + |y|) n-grams with `set`.
    const t0 = Math.max(threshold, 0);
    const share = (t0 / (1 + t0)) * (1 - 1e-12);
    const compared = new Set();
    let best = -1;
    let bestSim = -1;
    for (const list of lists) {
      for (const t of list) {
        if (compared.has(t)) continue;
        compared.add(t);
        const other = this.sets[t];
        if (Math.ceil(share * (set.size + other.size)) > Math.min(set.size, other.size)) continue;
        let inter = 0;
        const [small, large] = set.size <= other.size ? [set, other] : [other, set];
        for (const h of small) if (large.has(h)) inter++;
        const sim = inter / (set.size + other.size - inter);
        if (sim > bestSim || (sim === bestSim && t < best)) {
          best = t;
          bestSim = sim;
        }
      }
    }
    return best >= 0 && bestSim >= threshold ? { label: this.labels[best], sim: bestSim } : null;
  }
}

// ---------------------------------------------------------------------------------------------
// Cleaning
// ---------------------------------------------------------------------------------------------

/** The reference index, built once per configuration. */
function referenceIndex(cfg) {
  const idx = new NearDupIndex(cfg.dedup_ngram);
  cfg.reference_instructions.forEach((r, i) => idx.insertSet(`reference #${i + 1}`, idx.gramSet(r)));
  return idx;
}

const dropped = (code, detail) => ({ tag: "dropped", val: { code, detail } });

/** The fate of one sample: a WIT `outcome`. `seen` holds the batch's kept instructions. */
function cleanOne(cfg, reference, seen, sample) {
  const notes = [];
  let instruction = cfg.normalize ? normalizeWhitespace(sample.instruction) : sample.instruction;
  let response = cfg.normalize ? normalizeWhitespace(sample.response) : sample.response;

  let [cut, marker] = cutAtMarkers(instruction, cfg.leak_markers);
  if (marker !== null) {
    notes.push({ key: `${PLUGIN}.instruction-truncated-at`, value: marker });
    instruction = rustTrim(cut);
  }
  [cut, marker] = cutAtMarkers(response, cfg.leak_markers);
  if (marker !== null) {
    notes.push({ key: `${PLUGIN}.response-truncated-at`, value: marker });
    response = rustTrim(cut);
  }

  // Lengths in Unicode scalar values (Rust's chars().count()), not UTF-16 code units.
  const ilen = charCount(instruction);
  if (ilen < cfg.min_instruction_chars) {
    return dropped("instruction-too-short", `${ilen} characters, minimum ${cfg.min_instruction_chars}`);
  }
  if (ilen > cfg.max_instruction_chars) {
    return dropped("instruction-too-long", `${ilen} characters, maximum ${cfg.max_instruction_chars}`);
  }
  const rlen = charCount(response);
  if (rlen === 0) return dropped("empty-response", "the response is empty after cleaning");
  if (rlen < cfg.min_response_chars) {
    return dropped("response-too-short", `${rlen} characters, minimum ${cfg.min_response_chars}`);
  }
  if (rlen > cfg.max_response_chars) {
    return dropped("response-too-long", `${rlen} characters, maximum ${cfg.max_response_chars}`);
  }

  const rep = repeatedNgramRatio(response, cfg.repetition_ngram);
  if (rep > cfg.max_repetition) {
    return dropped(
      "repetitive",
      `repeated ${cfg.repetition_ngram}-gram ratio ${fixed3(rep)} exceeds ${rustFloat(cfg.max_repetition)}`,
    );
  }

  // Both indexes use cfg.dedup_ngram, so one n-gram set serves both searches and the insertion.
  const threshold = cfg.near_duplicate_threshold;
  const grams = seen.gramSet(instruction);
  let hit = reference.mostSimilarAtLeast(grams, threshold);
  if (hit) {
    return dropped("seed-duplicate", `Jaccard ${fixed3(hit.sim)} with ${hit.label} (threshold ${rustFloat(threshold)})`);
  }
  hit = seen.mostSimilarAtLeast(grams, threshold);
  if (hit) {
    return dropped("near-duplicate", `Jaccard ${fixed3(hit.sim)} with sample ${hit.label} (threshold ${rustFloat(threshold)})`);
  }
  seen.insertSet(sample.id, grams);

  // Only what changed crosses back to the host (undefined = option `none`).
  return {
    tag: "keep",
    val: {
      instruction: instruction !== sample.instruction ? instruction : undefined,
      response: response !== sample.response ? response : undefined,
      notes,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// WIT exports
// ---------------------------------------------------------------------------------------------

// The configuration in force and its reference index; built from `{}` on first use when the
// host never calls `configure`. A rejected configuration leaves the previous one in force.
let state = null;

function buildState(json) {
  const cfg = parseConfig(json);
  return { cfg, reference: referenceIndex(cfg) };
}

/**
 * What to throw for an error: componentize-js returns a thrown `{ code, message, recordIds }`
 * as the `err` of the WIT result (a `plugin-error`). Anything else (a bug) is thrown on as it
 * is, which traps, and the host quarantines the batch's records.
 */
function pluginError(e) {
  if (e instanceof ConfigError) return { code: "bad-config", message: e.message, recordIds: [] };
  return e;
}

export const cleaning = {
  info() {
    return { name: PLUGIN, version: "0.1.0", witVersion: WIT_VERSION };
  },

  configure(config) {
    try {
      state = buildState(config);
    } catch (e) {
      throw pluginError(e);
    }
  },

  clean(samples) {
    if (state === null) {
      try {
        state = buildState("{}");
      } catch (e) {
        throw pluginError(e);
      }
    }
    const { cfg, reference } = state;
    // Near-duplicates within the batch: against the instructions kept earlier in this call.
    const seen = new NearDupIndex(cfg.dedup_ngram);
    return samples.map((s) => cleanOne(cfg, reference, seen, s));
  },
};

// ---------------------------------------------------------------------------------------------
// Unicode table: Rust's char::is_alphanumeric
// ---------------------------------------------------------------------------------------------

// Rust's char::is_alphanumeric: Alphabetic, or a number (general categories Nd, Nl, No). As a
// regular expression that is /[\p{Alphabetic}\p{N}]/u ([\p{L}\p{N}] would be close but not equal:
// Alphabetic adds Other_Alphabetic, e.g. the vowel signs of Indic scripts, some combining marks
// and the circled letters), which this engine cannot compile; hence a table of code point ranges
// (hex, "start-end" or a single code point), for Rust 1.95.0 (Unicode 17.0.0, the toolchain that
// built cleaner-basic), generated by testing every char with is_alphanumeric and merging
// consecutive code points into ranges. It becomes one character class, so that the engine's
// regular expression matcher (much faster than a loop over characters in JavaScript) finds the
// words.
const ALNUM_RANGES = `
  30-39 41-5A 61-7A AA B2-B3 B5 B9-BA BC-BE C0-D6 D8-F6 F8-2C1 2C6-2D1 2E0-2E4 2EC 2EE 345
  363-374 376-377 37A-37D 37F 386 388-38A 38C 38E-3A1 3A3-3F5 3F7-481 48A-52F 531-556 559
  560-588 5B0-5BD 5BF 5C1-5C2 5C4-5C5 5C7 5D0-5EA 5EF-5F2 610-61A 620-657 659-669 66E-6D3
  6D5-6DC 6E1-6E8 6ED-6FC 6FF 710-73F 74D-7B1 7C0-7EA 7F4-7F5 7FA 800-817 81A-82C 840-858
  860-86A 870-887 889-88F 897 8A0-8C9 8D4-8DF 8E3-8E9 8F0-93B 93D-94C 94E-950 955-963 966-96F
  971-983 985-98C 98F-990 993-9A8 9AA-9B0 9B2 9B6-9B9 9BD-9C4 9C7-9C8 9CB-9CC 9CE 9D7 9DC-9DD
  9DF-9E3 9E6-9F1 9F4-9F9 9FC A01-A03 A05-A0A A0F-A10 A13-A28 A2A-A30 A32-A33 A35-A36 A38-A39
  A3E-A42 A47-A48 A4B-A4C A51 A59-A5C A5E A66-A75 A81-A83 A85-A8D A8F-A91 A93-AA8 AAA-AB0
  AB2-AB3 AB5-AB9 ABD-AC5 AC7-AC9 ACB-ACC AD0 AE0-AE3 AE6-AEF AF9-AFC B01-B03 B05-B0C B0F-B10
  B13-B28 B2A-B30 B32-B33 B35-B39 B3D-B44 B47-B48 B4B-B4C B56-B57 B5C-B5D B5F-B63 B66-B6F
  B71-B77 B82-B83 B85-B8A B8E-B90 B92-B95 B99-B9A B9C B9E-B9F BA3-BA4 BA8-BAA BAE-BB9 BBE-BC2
  BC6-BC8 BCA-BCC BD0 BD7 BE6-BF2 C00-C0C C0E-C10 C12-C28 C2A-C39 C3D-C44 C46-C48 C4A-C4C
  C55-C56 C58-C5A C5C-C5D C60-C63 C66-C6F C78-C7E C80-C83 C85-C8C C8E-C90 C92-CA8 CAA-CB3
  CB5-CB9 CBD-CC4 CC6-CC8 CCA-CCC CD5-CD6 CDC-CDE CE0-CE3 CE6-CEF CF1-CF3 D00-D0C D0E-D10
  D12-D3A D3D-D44 D46-D48 D4A-D4C D4E D54-D63 D66-D78 D7A-D7F D81-D83 D85-D96 D9A-DB1 DB3-DBB
  DBD DC0-DC6 DCF-DD4 DD6 DD8-DDF DE6-DEF DF2-DF3 E01-E3A E40-E46 E4D E50-E59 E81-E82 E84
  E86-E8A E8C-EA3 EA5 EA7-EB9 EBB-EBD EC0-EC4 EC6 ECD ED0-ED9 EDC-EDF F00 F20-F33 F40-F47
  F49-F6C F71-F83 F88-F97 F99-FBC 1000-1036 1038 103B-1049 1050-109D 10A0-10C5 10C7 10CD
  10D0-10FA 10FC-1248 124A-124D 1250-1256 1258 125A-125D 1260-1288 128A-128D 1290-12B0
  12B2-12B5 12B8-12BE 12C0 12C2-12C5 12C8-12D6 12D8-1310 1312-1315 1318-135A 1369-137C
  1380-138F 13A0-13F5 13F8-13FD 1401-166C 166F-167F 1681-169A 16A0-16EA 16EE-16F8 1700-1713
  171F-1733 1740-1753 1760-176C 176E-1770 1772-1773 1780-17B3 17B6-17C8 17D7 17DC 17E0-17E9
  17F0-17F9 1810-1819 1820-1878 1880-18AA 18B0-18F5 1900-191E 1920-192B 1930-1938 1946-196D
  1970-1974 1980-19AB 19B0-19C9 19D0-19DA 1A00-1A1B 1A20-1A5E 1A61-1A74 1A80-1A89 1A90-1A99
  1AA7 1ABF-1AC0 1ACC-1ACE 1B00-1B33 1B35-1B43 1B45-1B4C 1B50-1B59 1B80-1BA9 1BAC-1BE5
  1BE7-1BF1 1C00-1C36 1C40-1C49 1C4D-1C7D 1C80-1C8A 1C90-1CBA 1CBD-1CBF 1CE9-1CEC 1CEE-1CF3
  1CF5-1CF6 1CFA 1D00-1DBF 1DD3-1DF4 1E00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 1F59
  1F5B 1F5D 1F5F-1F7D 1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB
  1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 2070-2071 2074-2079 207F-2089 2090-209C 2102 2107 210A-2113
  2115 2119-211D 2124 2126 2128 212A-212D 212F-2139 213C-213F 2145-2149 214E 2150-2189
  2460-249B 24B6-24FF 2776-2793 2C00-2CE4 2CEB-2CEE 2CF2-2CF3 2CFD 2D00-2D25 2D27 2D2D
  2D30-2D67 2D6F 2D80-2D96 2DA0-2DA6 2DA8-2DAE 2DB0-2DB6 2DB8-2DBE 2DC0-2DC6 2DC8-2DCE
  2DD0-2DD6 2DD8-2DDE 2DE0-2DFF 2E2F 3005-3007 3021-3029 3031-3035 3038-303C 3041-3096
  309D-309F 30A1-30FA 30FC-30FF 3105-312F 3131-318E 3192-3195 31A0-31BF 31F0-31FF 3220-3229
  3248-324F 3251-325F 3280-3289 32B1-32BF 3400-4DBF 4E00-A48C A4D0-A4FD A500-A60C A610-A62B
  A640-A66E A674-A67B A67F-A6EF A717-A71F A722-A788 A78B-A7DC A7F1-A805 A807-A827 A830-A835
  A840-A873 A880-A8C3 A8C5 A8D0-A8D9 A8F2-A8F7 A8FB A8FD-A92A A930-A952 A960-A97C A980-A9B2
  A9B4-A9BF A9CF-A9D9 A9E0-A9FE AA00-AA36 AA40-AA4D AA50-AA59 AA60-AA76 AA7A-AABE AAC0 AAC2
  AADB-AADD AAE0-AAEF AAF2-AAF5 AB01-AB06 AB09-AB0E AB11-AB16 AB20-AB26 AB28-AB2E AB30-AB5A
  AB5C-AB69 AB70-ABEA ABF0-ABF9 AC00-D7A3 D7B0-D7C6 D7CB-D7FB F900-FA6D FA70-FAD9 FB00-FB06
  FB13-FB17 FB1D-FB28 FB2A-FB36 FB38-FB3C FB3E FB40-FB41 FB43-FB44 FB46-FBB1 FBD3-FD3D
  FD50-FD8F FD92-FDC7 FDF0-FDFB FE70-FE74 FE76-FEFC FF10-FF19 FF21-FF3A FF41-FF5A FF66-FFBE
  FFC2-FFC7 FFCA-FFCF FFD2-FFD7 FFDA-FFDC 10000-1000B 1000D-10026 10028-1003A 1003C-1003D
  1003F-1004D 10050-1005D 10080-100FA 10107-10133 10140-10178 1018A-1018B 10280-1029C
  102A0-102D0 102E1-102FB 10300-10323 1032D-1034A 10350-1037A 10380-1039D 103A0-103C3
  103C8-103CF 103D1-103D5 10400-1049D 104A0-104A9 104B0-104D3 104D8-104FB 10500-10527
  10530-10563 10570-1057A 1057C-1058A 1058C-10592 10594-10595 10597-105A1 105A3-105B1
  105B3-105B9 105BB-105BC 105C0-105F3 10600-10736 10740-10755 10760-10767 10780-10785
  10787-107B0 107B2-107BA 10800-10805 10808 1080A-10835 10837-10838 1083C 1083F-10855
  10858-10876 10879-1089E 108A7-108AF 108E0-108F2 108F4-108F5 108FB-1091B 10920-10939
  10940-10959 10980-109B7 109BC-109CF 109D2-10A03 10A05-10A06 10A0C-10A13 10A15-10A17
  10A19-10A35 10A40-10A48 10A60-10A7E 10A80-10A9F 10AC0-10AC7 10AC9-10AE4 10AEB-10AEF
  10B00-10B35 10B40-10B55 10B58-10B72 10B78-10B91 10BA9-10BAF 10C00-10C48 10C80-10CB2
  10CC0-10CF2 10CFA-10D27 10D30-10D39 10D40-10D65 10D69 10D6F-10D85 10E60-10E7E 10E80-10EA9
  10EAB-10EAC 10EB0-10EB1 10EC2-10EC7 10EFA-10EFC 10F00-10F27 10F30-10F45 10F51-10F54
  10F70-10F81 10FB0-10FCB 10FE0-10FF6 11000-11045 11052-1106F 11071-11075 11080-110B8 110C2
  110D0-110E8 110F0-110F9 11100-11132 11136-1113F 11144-11147 11150-11172 11176 11180-111BF
  111C1-111C4 111CE-111DA 111DC 111E1-111F4 11200-11211 11213-11234 11237 1123E-11241
  11280-11286 11288 1128A-1128D 1128F-1129D 1129F-112A8 112B0-112E8 112F0-112F9 11300-11303
  11305-1130C 1130F-11310 11313-11328 1132A-11330 11332-11333 11335-11339 1133D-11344
  11347-11348 1134B-1134C 11350 11357 1135D-11363 11380-11389 1138B 1138E 11390-113B5
  113B7-113C0 113C2 113C5 113C7-113CA 113CC-113CD 113D1 113D3 11400-11441 11443-11445
  11447-1144A 11450-11459 1145F-11461 11480-114C1 114C4-114C5 114C7 114D0-114D9 11580-115B5
  115B8-115BE 115D8-115DD 11600-1163E 11640 11644 11650-11659 11680-116B5 116B8 116C0-116C9
  116D0-116E3 11700-1171A 1171D-1172A 11730-1173B 11740-11746 11800-11838 118A0-118F2
  118FF-11906 11909 1190C-11913 11915-11916 11918-11935 11937-11938 1193B-1193C 1193F-11942
  11950-11959 119A0-119A7 119AA-119D7 119DA-119DF 119E1 119E3-119E4 11A00-11A32 11A35-11A3E
  11A50-11A97 11A9D 11AB0-11AF8 11B60-11B67 11BC0-11BE0 11BF0-11BF9 11C00-11C08 11C0A-11C36
  11C38-11C3E 11C40 11C50-11C6C 11C72-11C8F 11C92-11CA7 11CA9-11CB6 11D00-11D06 11D08-11D09
  11D0B-11D36 11D3A 11D3C-11D3D 11D3F-11D41 11D43 11D46-11D47 11D50-11D59 11D60-11D65
  11D67-11D68 11D6A-11D8E 11D90-11D91 11D93-11D96 11D98 11DA0-11DA9 11DB0-11DDB 11DE0-11DE9
  11EE0-11EF6 11F00-11F10 11F12-11F3A 11F3E-11F40 11F50-11F59 11FB0 11FC0-11FD4 12000-12399
  12400-1246E 12480-12543 12F90-12FF0 13000-1342F 13441-13446 13460-143FA 14400-14646
  16100-1612E 16130-16139 16800-16A38 16A40-16A5E 16A60-16A69 16A70-16ABE 16AC0-16AC9
  16AD0-16AED 16B00-16B2F 16B40-16B43 16B50-16B59 16B5B-16B61 16B63-16B77 16B7D-16B8F
  16D40-16D6C 16D70-16D79 16E40-16E96 16EA0-16EB8 16EBB-16ED3 16F00-16F4A 16F4F-16F87
  16F8F-16F9F 16FE0-16FE1 16FE3 16FF0-16FF6 17000-18CD5 18CFF-18D1E 18D80-18DF2 1AFF0-1AFF3
  1AFF5-1AFFB 1AFFD-1AFFE 1B000-1B122 1B132 1B150-1B152 1B155 1B164-1B167 1B170-1B2FB
  1BC00-1BC6A 1BC70-1BC7C 1BC80-1BC88 1BC90-1BC99 1BC9E 1CCF0-1CCF9 1D2C0-1D2D3 1D2E0-1D2F3
  1D360-1D378 1D400-1D454 1D456-1D49C 1D49E-1D49F 1D4A2 1D4A5-1D4A6 1D4A9-1D4AC 1D4AE-1D4B9
  1D4BB 1D4BD-1D4C3 1D4C5-1D505 1D507-1D50A 1D50D-1D514 1D516-1D51C 1D51E-1D539 1D53B-1D53E
  1D540-1D544 1D546 1D54A-1D550 1D552-1D6A5 1D6A8-1D6C0 1D6C2-1D6DA 1D6DC-1D6FA 1D6FC-1D714
  1D716-1D734 1D736-1D74E 1D750-1D76E 1D770-1D788 1D78A-1D7A8 1D7AA-1D7C2 1D7C4-1D7CB
  1D7CE-1D7FF 1DF00-1DF1E 1DF25-1DF2A 1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024
  1E026-1E02A 1E030-1E06D 1E08F 1E100-1E12C 1E137-1E13D 1E140-1E149 1E14E 1E290-1E2AD
  1E2C0-1E2EB 1E2F0-1E2F9 1E4D0-1E4EB 1E4F0-1E4F9 1E5D0-1E5ED 1E5F0-1E5FA 1E6C0-1E6DE
  1E6E0-1E6F5 1E6FE-1E6FF 1E7E0-1E7E6 1E7E8-1E7EB 1E7ED-1E7EE 1E7F0-1E7FE 1E800-1E8C4
  1E8C7-1E8CF 1E900-1E943 1E947 1E94B 1E950-1E959 1EC71-1ECAB 1ECAD-1ECAF 1ECB1-1ECB4
  1ED01-1ED2D 1ED2F-1ED3D 1EE00-1EE03 1EE05-1EE1F 1EE21-1EE22 1EE24 1EE27 1EE29-1EE32
  1EE34-1EE37 1EE39 1EE3B 1EE42 1EE47 1EE49 1EE4B 1EE4D-1EE4F 1EE51-1EE52 1EE54 1EE57 1EE59
  1EE5B 1EE5D 1EE5F 1EE61-1EE62 1EE64 1EE67-1EE6A 1EE6C-1EE72 1EE74-1EE77 1EE79-1EE7C 1EE7E
  1EE80-1EE89 1EE8B-1EE9B 1EEA1-1EEA3 1EEA5-1EEA9 1EEAB-1EEBB 1F100-1F10C 1F130-1F149
  1F150-1F169 1F170-1F189 1FBF0-1FBF9 20000-2A6DF 2A700-2B81D 2B820-2CEAD 2CEB0-2EBE0
  2EBF0-2EE5D 2F800-2FA1D 30000-3134A 31350-33479
`;
const WORD = new RegExp(
  "[" +
    ALNUM_RANGES.trim()
      .split(/\s+/)
      .map((r) => r.split("-").map((hex) => `\\u{${hex}}`).join("-"))
      .join("") +
    "]+",
  "gu",
);
