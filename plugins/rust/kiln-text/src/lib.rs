//! Text measures shared by kiln's reference plugins (and by the host's merge step), so that
//! "near-duplicate" and "repetitive" mean the same thing everywhere.

#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Normalise whitespace and control characters: CR LF and CR become LF, tabs and other
/// horizontal whitespace become one space, other control characters (and zero-width
/// characters) are removed, runs of spaces collapse, lines are trimmed at the end, more than
/// one blank line in a row collapses to one, and the whole text is trimmed.
pub fn normalize_whitespace(text: &str) -> String {
    // One pass over the text, writing lines straight into the output. Runs that need no change
    // (printable ASCII and single spaces) are copied whole; everything else goes one character
    // at a time. Within a line, "the last character written is a space" is the state that
    // decides whether a space collapses; at the start of a line `out` never ends with a space.
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut line_start = 0usize; // where the current line starts in `out`
    let mut blank_run = 0usize;
    let mut i = 0usize;
    // Ends the current line: trims it at the end, then adds the line feed unless the line is
    // a second (or later) blank line in a row, or a blank line before any text.
    let end_line = |out: &mut String, line_start: usize, blank_run: &mut usize| {
        let kept = out[line_start..].trim_end_matches(' ').len();
        out.truncate(line_start + kept);
        if kept == 0 {
            *blank_run += 1;
            if *blank_run > 1 || out.is_empty() {
                return;
            }
        } else {
            *blank_run = 0;
        }
        out.push('\n');
    };
    while i < bytes.len() {
        let end = plain_run_end(bytes, i, out.ends_with(' '));
        if end > i {
            out.push_str(&text[i..end]);
            i = end;
            continue;
        }
        let b = bytes[i];
        if b == b'\n' || b == b'\r' {
            // "\r\n", a lone "\r" and "\n" each end one line.
            i += if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
            end_line(&mut out, line_start, &mut blank_run);
            line_start = out.len();
            continue;
        }
        let ch = text[i..].chars().next().expect("a character at a char boundary");
        i += ch.len_utf8();
        let ch = match ch {
            '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{FEFF}' => continue,
            c if c.is_whitespace() => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if ch == ' ' && out.ends_with(' ') {
            continue;
        }
        out.push(ch);
    }
    end_line(&mut out, line_start, &mut blank_run);
    let end = out.trim_end().len();
    out.truncate(end);
    let start = out.len() - out.trim_start().len();
    out.drain(..start);
    out
}

/// [`normalize_whitespace`] without a copy for a text that normalisation leaves as it is
/// (borrowed exactly when the text is already normal: printable ASCII and line feeds, no
/// double space, no space before a line feed, no run of three line feeds, nothing to trim).
pub fn normalized(text: &str) -> std::borrow::Cow<'_, str> {
    if is_normal(text.as_bytes()) {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(normalize_whitespace(text))
    }
}

/// True when `normalize_whitespace` returns the text unchanged and the text is made of printable
/// ASCII and line feeds only (texts with anything else go the copying way).
fn is_normal(b: &[u8]) -> bool {
    if matches!(b.first(), Some(b' ' | b'\n')) || matches!(b.last(), Some(b' ' | b'\n')) {
        return false;
    }
    let mut i = 0;
    loop {
        i = plain_run_end(b, i, false);
        if i == b.len() {
            return true;
        }
        // A line feed ends a line with nothing to trim (not the first byte, see above), and
        // at most one blank line follows.
        if b[i] != b'\n' || b[i - 1] == b' ' || (b.get(i + 1) == Some(&b'\n') && b.get(i + 2) == Some(&b'\n')) {
            return false;
        }
        i += 1;
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Per byte of `x`: 0x80 where the byte equals `c`, else 0 (exact, no carries between bytes).
#[inline]
fn bytes_equal(x: u64, c: u8) -> u64 {
    let t = x ^ (ONES * c as u64);
    !(((t & !HIGH) + !HIGH) | t) & HIGH
}

/// The end of the run from `i` of bytes that normalisation keeps as they are: printable ASCII
/// (0x20..=0x7E) without a space right after a space (`prev_space`: the byte before `i`
/// counts as a space). Eight bytes at a time.
#[inline]
fn plain_run_end(b: &[u8], mut i: usize, mut prev_space: bool) -> usize {
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let low7 = x & !HIGH;
        // Non-ASCII, below 0x20 or 0x7F.
        let odd = (x | !(low7 + ONES * (0x80 - 0x20)) | (low7 + ONES)) & HIGH;
        let space = bytes_equal(x, b' ');
        let double = space & ((space << 8) | if prev_space { 0x80 } else { 0 });
        let stop = odd | double;
        if stop != 0 {
            return i + (stop.trailing_zeros() / 8) as usize;
        }
        prev_space = space >> 63 != 0;
        i += 8;
    }
    while i < b.len() {
        let c = b[i];
        if !(0x20..=0x7E).contains(&c) || (c == b' ' && prev_space) {
            break;
        }
        prev_space = c == b' ';
        i += 1;
    }
    i
}

/// Lower-cased word tokens (alphanumeric runs), the unit of every n-gram measure here.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// The word n-grams of a text (n >= 1). A text shorter than n words yields its whole word list
/// as one gram, so that short texts can still be compared.
pub fn ngrams(text: &str, n: usize) -> Vec<Vec<String>> {
    let w = words(text);
    let n = n.max(1);
    if w.is_empty() {
        return Vec::new();
    }
    if w.len() < n {
        return vec![w];
    }
    w.windows(n).map(|g| g.to_vec()).collect()
}

/// The set of word n-grams of a text.
pub fn ngram_set(text: &str, n: usize) -> HashSet<Vec<String>> {
    ngrams(text, n).into_iter().collect()
}

/// Jaccard similarity of two n-gram sets: |A ∩ B| / |A ∪ B|; two empty sets are identical (1.0).
pub fn jaccard(a: &HashSet<Vec<String>>, b: &HashSet<Vec<String>>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.iter().filter(|g| b.contains(*g)).count();
    let union = a.len() + b.len() - inter;
    inter as f64 / union as f64
}

/// Jaccard similarity of the word n-grams of two texts.
pub fn text_jaccard(a: &str, b: &str, n: usize) -> f64 {
    GramSet::of(a, n).jaccard(&GramSet::of(b, n))
}

/// Fraction of a text's word n-grams that repeat an earlier n-gram of the same text: 0 for a
/// text without repetition, close to 1 for a text stuck in a loop. Texts with fewer than
/// `n + 1` words have ratio 0.
pub fn repeated_ngram_ratio(text: &str, n: usize) -> f64 {
    repeated_ngram_ratio_with(text, n, &mut Vec::new())
}

/// [`repeated_ngram_ratio`] with a caller's buffer, so that repeated calls do not allocate.
pub fn repeated_ngram_ratio_with(text: &str, n: usize, buf: &mut Vec<u64>) -> f64 {
    let n = n.max(1);
    word_hashes(text, buf);
    let w = buf.len();
    if w <= n {
        return 0.0;
    }
    grams_in_place(buf, n);
    let total = buf.len();
    // A window repeats an earlier one unless it is the first of its kind: the repeats are the
    // windows less the distinct n-grams, counted with an open-addressing table (0 = free slot;
    // the gram hash 0 is tracked on its own) kept in the same buffer after the grams.
    let slots = (2 * total).next_power_of_two().max(16);
    buf.resize(total + slots, 0);
    let (grams, table) = buf.split_at_mut(total);
    let mask = slots - 1;
    let mut distinct = 0usize;
    let mut zero = false;
    for &g in grams.iter() {
        if g == 0 {
            distinct += usize::from(!zero);
            zero = true;
            continue;
        }
        let mut k = g as usize & mask;
        loop {
            let slot = table[k];
            if slot == g {
                break;
            }
            if slot == 0 {
                table[k] = g;
                distinct += 1;
                break;
            }
            k = (k + 1) & mask;
        }
    }
    let repeats = total - distinct;
    repeats as f64 / total as f64
}

// Word n-grams are compared as 64-bit hashes rather than as lists of words (Strings). A word's
// hash is a function of its lower-cased bytes only (two words of the same length up to 8 bytes
// never share a hash: every step is a bijection), and an n-gram's hash mixes its words' hashes
// in order together with its length. Two different n-grams get the same hash only by chance,
// with probability about m^2 / 2^65 among m distinct n-grams (3 * 10^-8 for a million of
// them), so set sizes, intersections and therefore Jaccard similarities and repetition ratios
// are those of the word lists themselves. The hash is fixed (no random seed): results are
// reproducible from run to run and the same natively and in WebAssembly.

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
const SEED: u64 = 0x243F_6A88_85A3_08D3;

/// The finaliser of MurmurHash3 (a bijection that spreads every input bit over the output).
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    h
}

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(MUL).rotate_left(29)
}

/// The little-endian value of 1 to 8 bytes (two overlapping loads, no per-byte loop).
#[inline]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!((1..=8).contains(&n));
    if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]) as u64;
        lo | hi << (8 * (n - 4))
    } else {
        b[0] as u64 | (b[n / 2] as u64) << (8 * (n / 2)) | (b[n - 1] as u64) << (8 * (n - 1))
    }
}

/// Hash of a word's bytes; `lower` ORs 0x20 into every byte, which lower-cases ASCII letters
/// and keeps ASCII digits (for words made of ASCII alphanumerics only).
#[inline]
fn hash_bytes(bytes: &[u8], lower: bool) -> u64 {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let mask = if lower { LOWER } else { 0 };
    let mut h = (bytes.len() as u64).wrapping_mul(MUL) ^ SEED;
    let mut rest = bytes;
    while rest.len() > 8 {
        h = mix(h, load_le(&rest[..8]) | mask);
        rest = &rest[8..];
    }
    if !rest.is_empty() {
        h = mix(h, load_le(rest) | (mask >> (8 * (8 - rest.len()))));
    }
    fmix64(h)
}

/// Hash of the lower-cased form of a word token (as in [`words`]).
#[inline]
fn hash_word(word: &str, ascii: bool) -> u64 {
    if ascii {
        hash_bytes(word.as_bytes(), true)
    } else {
        hash_bytes(word.to_lowercase().as_bytes(), false)
    }
}

/// Hash of an n-gram from its words' hashes.
#[inline]
fn hash_gram(words: &[u64]) -> u64 {
    let mut h = (words.len() as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    for &w in words {
        h = mix(h, w);
    }
    fmix64(h)
}

/// Byte classes for word scanning: ASCII non-alphanumeric, ASCII alphanumeric, non-ASCII.
const SEP: u8 = 0;
const ALNUM: u8 = 1;
const WIDE: u8 = 2;
static CLASS: [u8; 256] = {
    let mut t = [SEP; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c >= 0x80 {
            WIDE
        } else if c.is_ascii_alphanumeric() {
            ALNUM
        } else {
            SEP
        };
        b += 1;
    }
    t
};

/// The non-ASCII character at byte `i` of `text`: whether it is alphanumeric, and its length.
#[inline(never)]
fn wide_char(text: &str, i: usize) -> (bool, usize) {
    let c = text[i..].chars().next().expect("a character at a char boundary");
    (c.is_alphanumeric(), c.len_utf8())
}

/// The hashes of the word tokens of `text` (the same tokens as [`words`]), in order, into `out`.
fn word_hashes(text: &str, out: &mut Vec<u64>) {
    out.clear();
    if !word_hashes_ascii(text.as_bytes(), out) {
        out.clear();
        word_hashes_any(text, out);
    }
}

/// `hash_bytes(&bytes[start..end], true)`, without branching on the length for the usual
/// word of at most 8 bytes that is not at the very end of the text.
#[inline]
fn hash_ascii_word(bytes: &[u8], start: usize, end: usize) -> u64 {
    let len = end - start;
    if len <= 8 && start + 8 <= bytes.len() {
        let keep = u64::MAX >> (64 - 8 * len);
        let v = u64::from_le_bytes(bytes[start..start + 8].try_into().expect("8 bytes")) & keep;
        let h = (len as u64).wrapping_mul(MUL) ^ SEED;
        fmix64(mix(h, v | ((ONES * 0x20) & keep)))
    } else {
        hash_bytes(&bytes[start..end], true)
    }
}

/// Bit k (k < 8) set where byte k of `x` is an ASCII letter or digit (meaningless for a byte
/// of 0x80 or more).
#[inline]
fn alnum_bits(x: u64) -> u64 {
    // For bytes below 0x80, adding 0x80 - c sets a byte's top bit exactly when it is >= c,
    // without a carry into the next byte.
    let ge = |v: u64, c: u8| v.wrapping_add(ONES * (0x80 - c as u64));
    let digit = ge(x, b'0') & !ge(x, b'9' + 1);
    let y = x | (ONES * 0x20);
    let letter = ge(y, b'a') & !ge(y, b'z' + 1);
    // One bit per byte, gathered into the top byte by the multiplication, then moved down.
    (((digit | letter) & HIGH) >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// [`word_hashes`] for ASCII text, 64 bytes at a time: a bit mask of the letters and digits of
/// each block, whose edges are the word starts and ends. False (and `out` unfinished) when the
/// text is not ASCII.
fn word_hashes_ascii(bytes: &[u8], out: &mut Vec<u64>) -> bool {
    const NONE: usize = usize::MAX;
    let n = bytes.len();
    let mut start = NONE; // start of the word running into the current block
    let mut base = 0usize;
    while base < n {
        let block = &bytes[base..n.min(base + 64)];
        let mut mask = 0u64;
        let mut high = 0u64;
        for (k, chunk) in block.chunks(8).enumerate() {
            let x = if chunk.len() == 8 {
                u64::from_le_bytes(chunk.try_into().expect("8 bytes"))
            } else {
                load_le(chunk)
            };
            high |= x;
            mask |= alnum_bits(x) << (8 * k);
        }
        if high & HIGH != 0 {
            return false;
        }
        // Bit k of `edges`: byte k starts a word or is the first byte after one.
        let mut edges = mask ^ ((mask << 1) | u64::from(start != NONE));
        while edges != 0 {
            let pos = base + edges.trailing_zeros() as usize;
            edges &= edges - 1;
            if start == NONE {
                start = pos;
            } else {
                out.push(hash_ascii_word(bytes, start, pos));
                start = NONE;
            }
        }
        base += 64;
    }
    if start != NONE {
        out.push(hash_bytes(&bytes[start..], true));
    }
    true
}

/// [`word_hashes`] for any text, one character at a time.
fn word_hashes_any(text: &str, out: &mut Vec<u64>) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = 0usize;
    while i < n {
        match CLASS[bytes[i] as usize] {
            SEP => {
                i += 1;
                continue;
            }
            WIDE => {
                let (alnum, len) = wide_char(text, i);
                if !alnum {
                    i += len;
                    continue;
                }
            }
            _ => {}
        }
        // A word starts at i: alphanumeric characters up to the next other one.
        let start = i;
        let mut ascii = true;
        loop {
            while i < n && CLASS[bytes[i] as usize] == ALNUM {
                i += 1;
            }
            if i < n && CLASS[bytes[i] as usize] == WIDE {
                let (alnum, len) = wide_char(text, i);
                if alnum {
                    ascii = false;
                    i += len;
                    continue;
                }
            }
            break;
        }
        out.push(hash_word(&text[start..i], ascii));
    }
}

/// Turn the word hashes in `buf` into the hashes of its n-grams, in order (as [`ngrams`]: a
/// text shorter than n words yields one gram of all its words).
fn grams_in_place(buf: &mut Vec<u64>, n: usize) {
    let w = buf.len();
    if w == 0 {
        return;
    }
    if w < n {
        let g = hash_gram(buf);
        buf.clear();
        buf.push(g);
        return;
    }
    let count = w - n + 1;
    match n {
        1 => grams_fixed::<1>(buf),
        2 => grams_fixed::<2>(buf),
        3 => grams_fixed::<3>(buf),
        4 => grams_fixed::<4>(buf),
        5 => grams_fixed::<5>(buf),
        _ => {
            for i in 0..count {
                // Gram i needs words i..i+n; words after i are still in place.
                let g = hash_gram(&buf[i..i + n]);
                buf[i] = g;
            }
        }
    }
    buf.truncate(count);
}

/// The in-place n-gram loop of [`grams_in_place`] for a fixed n (unrolled).
#[inline]
fn grams_fixed<const N: usize>(buf: &mut [u64]) {
    for i in 0..=buf.len() - N {
        let words: [u64; N] = buf[i..i + N].try_into().expect("N words");
        buf[i] = hash_gram(&words);
    }
}

/// The set of word n-grams of a text (as [`ngram_set`]), each n-gram held as a 64-bit hash
/// (see the note on hashing above; a collision is negligible): a sorted list without
/// duplicates, so that no n-gram costs an allocation and set operations are merges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GramSet {
    n: usize,
    hashes: Vec<u64>,
}

impl GramSet {
    /// The word n-gram set of `text`.
    pub fn of(text: &str, n: usize) -> Self {
        let mut set = GramSet::default();
        set.fill(text, n);
        set
    }

    /// Make this the word n-gram set of `text`, reusing the buffer.
    pub fn fill(&mut self, text: &str, n: usize) {
        self.n = n.max(1);
        word_hashes(text, &mut self.hashes);
        grams_in_place(&mut self.hashes, self.n);
        self.hashes.sort_unstable();
        self.hashes.dedup();
    }

    /// The n-gram size.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of distinct n-grams.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The n-grams' 64-bit hashes, sorted, without duplicates.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// True for a text without words.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Jaccard similarity: |A ∩ B| / |A ∪ B|; two empty sets are identical (1.0).
    pub fn jaccard(&self, other: &GramSet) -> f64 {
        jaccard_sorted(&self.hashes, &other.hashes)
    }
}

/// A 64-bit signature of an n-gram set: bit `g >> 58` set for each n-gram hash `g`.
#[inline]
fn signature(grams: &[u64]) -> u64 {
    grams.iter().fold(0, |sig, &g| sig | 1 << (g >> 58))
}

/// `v.ceil() as usize` for a finite `v >= 0`, without a call into the maths library.
#[inline]
fn ceil_usize(v: f64) -> usize {
    let floor = v as usize;
    floor + usize::from((floor as f64) < v)
}

/// The number of common elements of two sorted lists without duplicates, if it is at least
/// `need` (the merge stops as soon as too many elements of either list went unmatched).
#[inline]
fn overlap_if_at_least(a: &[u64], b: &[u64], need: usize) -> Option<usize> {
    if need > a.len().min(b.len()) {
        return None;
    }
    let (slack_a, slack_b) = (a.len() - need, b.len() - need);
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        inter += usize::from(x == y);
        i += usize::from(x <= y);
        j += usize::from(y <= x);
        if i - inter > slack_a || j - inter > slack_b {
            return None;
        }
    }
    (inter >= need).then_some(inter)
}

/// Jaccard similarity of two sorted lists without duplicates; two empty lists give 1.0.
fn jaccard_sorted(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    // With nothing required, the bounded merge never stops early and always gives the count.
    let inter = overlap_if_at_least(a, b, 0).expect("an overlap of at least 0 always exists");
    let union = a.len() + b.len() - inter;
    inter as f64 / union as f64
}

/// A hasher for keys that are already well-mixed 64-bit hashes: the key is the hash.
#[derive(Default, Clone, Copy)]
struct PrehashedU64(u64);

impl Hasher for PrehashedU64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0, b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const NO_ENTRY: u32 = u32::MAX;

/// The postings list of one n-gram: its latest entry in `NearDupIndex::entries` and its length.
#[derive(Debug, Clone, Copy)]
struct Posting {
    head: u32,
    len: u32,
}

/// An index of n-gram sets for near-duplicate search: each text is compared with every text
/// added before it that shares at least one n-gram. The n-grams are held as 64-bit hashes
/// (see [`GramSet`]).
#[derive(Debug, Default, Clone)]
pub struct NearDupIndex {
    n: usize,
    labels: Vec<String>,
    /// The n-gram sets of the texts, one after the other: text `t` holds
    /// `grams[ends[t - 1]..ends[t]]` (from 0 for the first).
    grams: Vec<u64>,
    ends: Vec<u32>,
    /// A 64-bit signature of each text's n-gram set (see [`signature`]).
    signatures: Vec<u64>,
    /// n-gram -> its postings list, kept as a linked list in `entries`.
    postings: HashMap<u64, Posting, BuildHasherDefault<PrehashedU64>>,
    /// (text, previous entry of the same n-gram, or `NO_ENTRY`).
    entries: Vec<(u32, u32)>,
}

/// Reusable working memory for searches in a [`NearDupIndex`].
#[derive(Debug, Default, Clone)]
pub struct SearchScratch {
    /// `marks[t] == stamp`: text `t` was already compared in this search.
    marks: Vec<u32>,
    stamp: u32,
    /// (length, head) of the postings lists a search walks: the query's shortest ones.
    lists: Vec<(u32, u32)>,
}

impl NearDupIndex {
    /// An empty index over word n-grams of size `n`.
    pub fn new(n: usize) -> Self {
        NearDupIndex { n: n.max(1), ..Default::default() }
    }

    /// The n-gram size of this index.
    pub fn ngram(&self) -> usize {
        self.n.max(1)
    }

    /// The most similar text already in the index: (label, Jaccard similarity), if any shares
    /// an n-gram with `text`.
    pub fn most_similar(&self, text: &str) -> Option<(&str, f64)> {
        let set = GramSet::of(text, self.ngram());
        self.most_similar_set(&set, &mut SearchScratch::default())
    }

    /// [`most_similar`](Self::most_similar) for an n-gram set made with this index's n-gram
    /// size. Among equally similar texts, the one added first wins.
    pub fn most_similar_set(&self, set: &GramSet, scratch: &mut SearchScratch) -> Option<(&str, f64)> {
        self.most_similar_at_least(set, 0.0, scratch)
    }

    /// The most similar text whose similarity is at least `threshold`: the same answer as
    /// [`most_similar_set`](Self::most_similar_set) when that one reaches `threshold`, else
    /// None. Only texts that can reach the threshold are compared.
    pub fn most_similar_at_least(&self, set: &GramSet, threshold: f64, scratch: &mut SearchScratch) -> Option<(&str, f64)> {
        assert_eq!(set.n, self.ngram(), "n-gram set of another n-gram size");
        let x = &set.hashes;
        if x.is_empty() || self.ends.is_empty() {
            return None;
        }
        // A text with Jaccard similarity s >= threshold shares at least s * |union| >=
        // threshold * |x| n-grams with x (a little less is allowed for rounding), so it holds at
        // least one of any |x| - need + 1 n-grams of x: searching the postings of the
        // |x| - need + 1 n-grams with the fewest texts finds every such text.
        let need = if threshold > 0.0 {
            ((threshold * x.len() as f64 * (1.0 - 1e-12)).ceil() as usize).clamp(1, x.len())
        } else {
            1
        };
        let probe = x.len() - need + 1;
        let SearchScratch { marks, stamp, lists } = scratch;
        lists.clear();
        lists.extend(x.iter().map(|g| self.postings.get(g).map_or((0, NO_ENTRY), |p| (p.len, p.head))));
        if probe < lists.len() {
            lists.select_nth_unstable_by_key(probe - 1, |&(len, _)| len);
            lists.truncate(probe);
        }
        if marks.len() < self.ends.len() {
            marks.resize(self.ends.len(), 0);
        }
        if *stamp == u32::MAX {
            marks.iter_mut().for_each(|m| *m = 0);
            *stamp = 0;
        }
        *stamp += 1;
        // A text y reaches the threshold only if it shares at least
        // threshold / (1 + threshold) * (|x| + |y|) n-grams with x (again less a little).
        let share = threshold.max(0.0) / (1.0 + threshold.max(0.0)) * (1.0 - 1e-12);
        let sig_x = signature(x);
        let mut best: Option<(u32, f64)> = None;
        for &(_, head) in lists.iter() {
            let mut e = head;
            while e != NO_ENTRY {
                let (t, prev) = self.entries[e as usize];
                e = prev;
                let mark = &mut marks[t as usize];
                if *mark == *stamp {
                    continue;
                }
                *mark = *stamp;
                let y = self.set_of(t as usize);
                let need = ceil_usize(share * (x.len() + y.len()) as f64);
                if need > x.len().min(y.len()) {
                    continue;
                }
                // Every signature bit of one set that the other lacks stands for at least one
                // n-gram the other lacks: a lower bound on the unmatched n-grams of each side.
                let sig_y = self.signatures[t as usize];
                if (sig_x & !sig_y).count_ones() as usize > x.len() - need
                    || (sig_y & !sig_x).count_ones() as usize > y.len() - need
                {
                    continue;
                }
                let Some(inter) = overlap_if_at_least(x, y, need) else { continue };
                let s = inter as f64 / (x.len() + y.len() - inter) as f64;
                if s >= threshold && best.is_none_or(|(bt, b)| s > b || (s == b && t < bt)) {
                    best = Some((t, s));
                }
            }
        }
        best.map(|(t, s)| (self.labels[t as usize].as_str(), s))
    }

    fn set_of(&self, t: usize) -> &[u64] {
        let start = if t == 0 { 0 } else { self.ends[t - 1] as usize };
        &self.grams[start..self.ends[t] as usize]
    }

    /// Add a text under a label (e.g. a sample id or "seed:3").
    pub fn insert(&mut self, label: impl Into<String>, text: &str) {
        let set = GramSet::of(text, self.ngram());
        self.insert_set(label, &set);
    }

    /// [`insert`](Self::insert) for an n-gram set made with this index's n-gram size.
    pub fn insert_set(&mut self, label: impl Into<String>, set: &GramSet) {
        assert_eq!(set.n, self.ngram(), "n-gram set of another n-gram size");
        let text = u32::try_from(self.ends.len()).expect("fewer than 2^32 texts");
        for &g in &set.hashes {
            let entry = u32::try_from(self.entries.len()).expect("fewer than 2^32 postings");
            let p = self.postings.entry(g).or_insert(Posting { head: NO_ENTRY, len: 0 });
            self.entries.push((text, p.head));
            p.head = entry;
            p.len += 1;
        }
        self.grams.extend_from_slice(&set.hashes);
        self.signatures.push(signature(&set.hashes));
        self.ends.push(u32::try_from(self.grams.len()).expect("fewer than 2^32 n-grams"));
        self.labels.push(label.into());
    }

    /// Number of texts in the index.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no text was added.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// The number of characters of `text` when it lies outside `min..=max`, None when inside.
/// A character takes one to four bytes, so the byte length alone settles most texts without
/// counting: within bounds when `len <= max` and `ceil(len / 4) >= min`.
pub fn chars_outside(text: &str, min: usize, max: usize) -> Option<usize> {
    let len = text.len();
    if len <= max && len.div_ceil(4) >= min {
        return None;
    }
    let n = text.chars().count();
    (n < min || n > max).then_some(n)
}

/// Cut a text at the first occurrence of any marker; returns the text before it and the marker
/// that matched (the earliest one in the text; at equal positions, the first in `markers`).
pub fn cut_at_markers<'a>(text: &'a str, markers: &[String]) -> (&'a str, Option<String>) {
    // One scan of the text for the bytes that start a marker, eight bytes at a time; only
    // there are the markers compared.
    let mut firsts = [0u8; 8];
    let mut count = 0;
    for m in markers.iter().filter(|m| !m.is_empty()) {
        let b = m.as_bytes()[0];
        if !firsts[..count.min(8)].contains(&b) {
            if count < 8 {
                firsts[count] = b;
            }
            count += 1;
        }
    }
    let bytes = text.as_bytes();
    let found = match count {
        0 => None,
        1 => find_marker::<1>(bytes, &firsts, markers),
        2 => find_marker::<2>(bytes, &firsts, markers),
        3 => find_marker::<3>(bytes, &firsts, markers),
        4 => find_marker::<4>(bytes, &firsts, markers),
        5 => find_marker::<5>(bytes, &firsts, markers),
        6 => find_marker::<6>(bytes, &firsts, markers),
        7 => find_marker::<7>(bytes, &firsts, markers),
        8 => find_marker::<8>(bytes, &firsts, markers),
        _ => (0..bytes.len()).find_map(|pos| marker_at(bytes, pos, markers).map(|m| (pos, m))),
    };
    match found {
        // A marker is valid UTF-8, so a match starts at a char boundary.
        Some((pos, m)) => (&text[..pos], Some(m.clone())),
        None => (text, None),
    }
}

/// The first marker (in list order) that occurs at byte `pos`.
#[inline]
fn marker_at<'m>(bytes: &[u8], pos: usize, markers: &'m [String]) -> Option<&'m String> {
    let rest = &bytes[pos..];
    markers.iter().find(|m| !m.is_empty() && rest.starts_with(m.as_bytes()))
}

/// The earliest marker occurrence, for markers whose first bytes are the `K` bytes of `firsts`.
fn find_marker<'m, const K: usize>(bytes: &[u8], firsts: &[u8; 8], markers: &'m [String]) -> Option<(usize, &'m String)> {
    let firsts: [u8; K] = firsts[..K].try_into().expect("K first bytes");
    let splats = firsts.map(|b| ONES * b as u64);
    let check = |from: usize, to: usize| {
        (from..to).filter(|&p| firsts.contains(&bytes[p])).find_map(|p| marker_at(bytes, p, markers).map(|m| (p, m)))
    };
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let x = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        // Per first byte, the lowest flagged byte of `hit` is its first occurrence in the
        // chunk (flags above it may be spurious), so the lowest flag overall is exact.
        let mut hit = 0u64;
        for s in splats {
            let t = x ^ s;
            hit |= t.wrapping_sub(ONES) & !t;
        }
        hit &= HIGH;
        if hit != 0 {
            if let Some(found) = check(i + (hit.trailing_zeros() / 8) as usize, i + 8) {
                return Some(found);
            }
        }
        i += 8;
    }
    check(i, bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_outside_agrees_with_counting() {
        let texts = ["", "a", "abcd", "abcdefghij", "é", "éééé", "日本語のテキスト", "👩‍💻 code", "mixed ascii and ü and 😀"];
        for t in texts {
            let n = t.chars().count();
            for min in 0..12 {
                for max in min..40 {
                    let want = (n < min || n > max).then_some(n);
                    assert_eq!(chars_outside(t, min, max), want, "{t:?} {min}..={max}");
                }
            }
        }
    }

    #[test]
    fn normalises_whitespace_and_controls() {
        // Leading indentation of inner lines is kept (code blocks), control characters vanish.
        assert_eq!(normalize_whitespace("  a\t\tb\r\n\r\n\r\n c\u{0007}d  "), "a b\n\n cd");
        assert_eq!(normalize_whitespace("x\u{200B}y"), "xy");
        assert_eq!(normalize_whitespace("\n\n"), "");
    }

    #[test]
    fn jaccard_and_repetition() {
        assert_eq!(text_jaccard("a b c", "a b c", 2), 1.0);
        assert_eq!(text_jaccard("a b c", "d e f", 2), 0.0);
        // {ab, bc} vs {ab, bd}: 1 shared of 3.
        assert!((text_jaccard("a b c", "a b d", 2) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(repeated_ngram_ratio("one two three four", 2), 0.0);
        // 8 bigrams of "x y" repeated: first two distinct, the remaining 6 repeat.
        let r = repeated_ngram_ratio("x y x y x y x y x", 2);
        assert!((r - 6.0 / 8.0).abs() < 1e-12, "{r}");
    }

    #[test]
    fn index_finds_nearest() {
        let mut idx = NearDupIndex::new(2);
        idx.insert("s1", "Write a poem about the sea");
        idx.insert("s2", "Summarise the article below");
        let (label, sim) = idx.most_similar("write a poem about the sea at night").unwrap();
        assert_eq!(label, "s1");
        assert!(sim > 0.5);
        assert!(idx.most_similar("completely unrelated words here").is_none());
    }

    #[test]
    fn cuts_at_earliest_marker() {
        let m = vec!["Instruction:".to_string(), "\n\n".to_string()];
        assert_eq!(cut_at_markers("ok\n\nInstruction: x", &m), ("ok", Some("\n\n".to_string())));
        assert_eq!(cut_at_markers("fine", &m), ("fine", None));
    }

    // The measures against straightforward versions over word lists (Strings), on random texts
    // mixing ASCII, other scripts, case-changing letters, whitespace, control characters and
    // markers.

    const PIECES: &[&str] = &[
        "a", "b", "ab", "the", "The", "THE", "x1", "42", "Σ", "σ", "ς", "ΣΑΣ", "\u{212A}m", "km", "İ", "é",
        "É", "ß", "ﬁ", "日本", "—", "’", "'", ".", ",", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\n\n\n",
        "\u{0007}", "\u{7F}", "\u{200B}", "\u{FEFF}", "\u{85}", "\u{A0}", "\u{2028}", "\u{3000}", "Instruction:",
        "Response:", "### ", "<|", "<start_of_turn>", "\nUser:", "longwordwithmorethan8", "abcdefgh", "abcdefghi",
        "0123456789", "ÅÄÖ", "\u{1F600}", "sea", "poem", "write", "about",
    ];

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn text(&mut self, pieces: &[&str], max: usize) -> String {
            let len = self.below(max + 1);
            (0..len).map(|_| pieces[self.below(pieces.len())]).collect()
        }
    }

    fn normalize_reference(text: &str) -> String {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut lines: Vec<String> = Vec::new();
        for line in text.split('\n') {
            let mut out = String::new();
            let mut last_space = false;
            for ch in line.chars() {
                let ch = match ch {
                    '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{FEFF}' => continue,
                    c if c.is_whitespace() => ' ',
                    c if c.is_control() => continue,
                    c => c,
                };
                if ch == ' ' {
                    if last_space {
                        continue;
                    }
                    last_space = true;
                } else {
                    last_space = false;
                }
                out.push(ch);
            }
            lines.push(out.trim_end().to_string());
        }
        let mut joined = String::new();
        let mut blank_run = 0;
        for line in &lines {
            if line.is_empty() {
                blank_run += 1;
                if blank_run > 1 {
                    continue;
                }
            } else {
                blank_run = 0;
            }
            if !joined.is_empty() || !line.is_empty() {
                joined.push_str(line);
                joined.push('\n');
            }
        }
        joined.trim().to_string()
    }

    fn cut_reference<'a>(text: &'a str, markers: &[String]) -> (&'a str, Option<String>) {
        let mut best: Option<(usize, &String)> = None;
        for m in markers.iter().filter(|m| !m.is_empty()) {
            if let Some(pos) = text.find(m.as_str()) {
                if best.is_none_or(|(b, _)| pos < b) {
                    best = Some((pos, m));
                }
            }
        }
        match best {
            Some((pos, m)) => (&text[..pos], Some(m.clone())),
            None => (text, None),
        }
    }

    fn repetition_reference(text: &str, n: usize) -> f64 {
        let w = words(text);
        let n = n.max(1);
        if w.len() <= n {
            return 0.0;
        }
        let total = w.len() - n + 1;
        let mut seen: HashMap<&[String], usize> = HashMap::new();
        let mut repeats = 0usize;
        for g in w.windows(n) {
            let count = seen.entry(g).or_insert(0);
            if *count > 0 {
                repeats += 1;
            }
            *count += 1;
        }
        repeats as f64 / total as f64
    }

    /// Best (index, similarity) over all texts sharing an n-gram, the first one on ties.
    fn most_similar_reference(sets: &[HashSet<Vec<String>>], query: &HashSet<Vec<String>>) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (i, set) in sets.iter().enumerate() {
            if set.iter().any(|g| query.contains(g)) {
                let s = jaccard(query, set);
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((i, s));
                }
            }
        }
        best
    }

    #[test]
    fn normalized_borrows_exactly_the_normal_texts() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut borrowed = 0;
        let fixed = ["", "a", "a b", "a\nb", "a\n\nb", "a\n\n\nb", "a \nb", "a\n b", " a", "a ", "\na", "a\n", "a  b", "a\tb", "caf\u{e9}"];
        // Mostly the plain ASCII pieces a normal text is made of, so that both answers are common.
        let ascii = ["a", "the", "x1", ".", " ", "  ", "\n", "\n\n", "\n\n\n", " \n", "\n "];
        let random: Vec<String> = (0..20_000).map(|i| if i % 4 == 0 { rng.text(PIECES, 12) } else { rng.text(&ascii, 12) }).collect();
        for text in fixed.iter().map(|t| t.to_string()).chain(random) {
            let full = normalize_whitespace(&text);
            match normalized(&text) {
                std::borrow::Cow::Borrowed(b) => {
                    assert_eq!(full, text, "borrowed a text normalisation changes: {text:?}");
                    assert_eq!(b, text);
                    borrowed += 1;
                }
                std::borrow::Cow::Owned(o) => {
                    assert_eq!(o, full, "{text:?}");
                    assert!(full != text || !text.bytes().all(|c| c == b'\n' || (0x20..=0x7E).contains(&c)), "copied a normal text: {text:?}");
                }
            }
        }
        assert!(borrowed > 1000, "too few normal texts in the sample: {borrowed}");
    }

    #[test]
    fn normalisation_matches_the_line_by_line_version() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let text = rng.text(PIECES, 40);
            assert_eq!(normalize_whitespace(&text), normalize_reference(&text), "{text:?}");
        }
        for text in ["", " ", "\n", "a  b", "  a", "a  ", "\r\r\n", "x\n \n\ny", "abcdefgh  ijklmnop  ", "aaaaaaa  b"] {
            assert_eq!(normalize_whitespace(text), normalize_reference(text), "{text:?}");
        }
    }

    #[test]
    fn cutting_matches_the_marker_by_marker_version() {
        let default: Vec<String> = ["Instruction:", "Response:", "### ", "\nUser:", "\nAssistant:", "<start_of_turn>", "<end_of_turn>", "<|"]
            .map(String::from)
            .to_vec();
        let many: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "Σ", "", "ab", "abc"].map(String::from).to_vec();
        let same_start: Vec<String> = ["abc", "ab", "", "日本", "日"].map(String::from).to_vec();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..20_000 {
            let text = rng.text(PIECES, 40);
            for markers in [&default, &many, &same_start, &Vec::new()] {
                assert_eq!(cut_at_markers(&text, markers), cut_reference(&text, markers), "{text:?} {markers:?}");
            }
        }
    }

    #[test]
    fn hashed_ngrams_match_word_lists() {
        let mut rng = Rng(0xD6E8_FEB8_6659_FD93);
        // A small vocabulary, so that texts share and repeat n-grams.
        let vocab = ["a", "A", "b", "the", "The", "sea", "Σας", "σας", "\u{212A}", "k", "abcdefghij", "ABCDEFGHIJ", " ", " ", " ", ", ", "\n", "é"];
        for round in 0..5_000 {
            let pieces: &[&str] = if round % 2 == 0 { &vocab } else { PIECES };
            let (a, b) = (rng.text(pieces, 60), rng.text(pieces, 60));
            for n in 1..=6 {
                let (sa, sb) = (ngram_set(&a, n), ngram_set(&b, n));
                let (ga, gb) = (GramSet::of(&a, n), GramSet::of(&b, n));
                assert_eq!(ga.len(), sa.len(), "{a:?} {n}");
                assert_eq!(ga.jaccard(&gb), jaccard(&sa, &sb), "{a:?} {b:?} {n}");
                assert_eq!(repeated_ngram_ratio(&a, n), repetition_reference(&a, n), "{a:?} {n}");
            }
        }
        // Words across the 64-byte blocks of the ASCII scan, and at the very end.
        for len in 1..200 {
            let text: String = (0..len).map(|i| if i % 7 == 6 { ' ' } else { (b'a' + (i % 26) as u8) as char }).collect();
            let doubled = format!("{text} {text}");
            assert_eq!(repeated_ngram_ratio(&doubled, 2), repetition_reference(&doubled, 2), "{doubled:?}");
            assert_eq!(GramSet::of(&doubled, 1).len(), ngram_set(&doubled, 1).len(), "{doubled:?}");
        }
    }

    #[test]
    fn alphanumeric_bits_of_every_ascii_byte() {
        for b in 0u8..0x80 {
            for k in 0..8 {
                let x = (b as u64) << (8 * k) | (ONES * b'-' as u64) & !(0xFF << (8 * k));
                assert_eq!(alnum_bits(x) >> k & 1 == 1, b.is_ascii_alphanumeric(), "byte {b:#x} at {k}");
            }
        }
    }

    #[test]
    fn index_matches_brute_force() {
        let mut rng = Rng(0x243F_6A88_85A3_08D3);
        let vocab = ["write", "a", "poem", "about", "the", "sea", "river", "Sea", "night", "short", ".", " ", " ", " "];
        for n in 1..=4 {
            let mut idx = NearDupIndex::new(n);
            let mut sets = Vec::new();
            let mut scratch = SearchScratch::default();
            for i in 0..300 {
                let text = rng.text(&vocab, 30);
                let query = ngram_set(&text, n);
                let expected = most_similar_reference(&sets, &query);
                let got = idx.most_similar(&text).map(|(l, s)| (l.to_string(), s));
                assert_eq!(got, expected.map(|(i, s)| (format!("t{i}"), s)), "{text:?}");
                let set = GramSet::of(&text, n);
                for t in [0.0, 0.2, 0.5, 0.7, 0.75, 0.9, 1.0] {
                    let got = idx.most_similar_at_least(&set, t, &mut scratch).map(|(l, s)| (l.to_string(), s));
                    let want = expected.filter(|&(_, s)| s >= t).map(|(i, s)| (format!("t{i}"), s));
                    assert_eq!(got, want, "{text:?} at {t}");
                }
                if i % 3 != 0 {
                    idx.insert(format!("t{}", sets.len()), &text);
                    sets.push(query);
                }
            }
        }
    }

}
