//! Text measures shared by kiln's reference plugins (and by the host's merge step), so that
//! "near-duplicate" and "repetitive" mean the same thing everywhere.

#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};

/// Normalise whitespace and control characters: CR LF and CR become LF, tabs and other
/// horizontal whitespace become one space, other control characters (and zero-width
/// characters) are removed, runs of spaces collapse, lines are trimmed at the end, more than
/// one blank line in a row collapses to one, and the whole text is trimmed.
pub fn normalize_whitespace(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let mut out = String::with_capacity(line.len());
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
    let mut joined = String::with_capacity(text.len());
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
    jaccard(&ngram_set(a, n), &ngram_set(b, n))
}

/// Fraction of a text's word n-grams that repeat an earlier n-gram of the same text: 0 for a
/// text without repetition, close to 1 for a text stuck in a loop. Texts with fewer than
/// `n + 1` words have ratio 0.
pub fn repeated_ngram_ratio(text: &str, n: usize) -> f64 {
    let w = words(text);
    let n = n.max(1);
    if w.len() <= n {
        return 0.0;
    }
    let total = w.len() - n + 1;
    let mut seen: HashMap<&[String], usize> = HashMap::with_capacity(total);
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

/// An index of n-gram sets for near-duplicate search: each text is compared with every text
/// added before it that shares at least one n-gram.
#[derive(Debug, Default, Clone)]
pub struct NearDupIndex {
    n: usize,
    sets: Vec<HashSet<Vec<String>>>,
    labels: Vec<String>,
    postings: HashMap<Vec<String>, Vec<usize>>,
}

impl NearDupIndex {
    /// An empty index over word n-grams of size `n`.
    pub fn new(n: usize) -> Self {
        NearDupIndex { n: n.max(1), ..Default::default() }
    }

    /// The most similar text already in the index: (label, Jaccard similarity), if any shares
    /// an n-gram with `text`.
    pub fn most_similar(&self, text: &str) -> Option<(&str, f64)> {
        let set = ngram_set(text, self.n);
        self.most_similar_set(&set)
    }

    fn most_similar_set(&self, set: &HashSet<Vec<String>>) -> Option<(&str, f64)> {
        let mut candidates: Vec<usize> = set
            .iter()
            .filter_map(|g| self.postings.get(g))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut best: Option<(usize, f64)> = None;
        for i in candidates {
            let s = jaccard(set, &self.sets[i]);
            if best.map_or(true, |(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, s)| (self.labels[i].as_str(), s))
    }

    /// Add a text under a label (e.g. a sample id or "seed:3").
    pub fn insert(&mut self, label: impl Into<String>, text: &str) {
        let set = ngram_set(text, self.n);
        let idx = self.sets.len();
        for g in &set {
            self.postings.entry(g.clone()).or_default().push(idx);
        }
        self.sets.push(set);
        self.labels.push(label.into());
    }

    /// Number of texts in the index.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// True when no text was added.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// Cut a text at the first occurrence of any marker; returns the text before it and the marker
/// that matched (the earliest one in the text).
pub fn cut_at_markers<'a>(text: &'a str, markers: &[String]) -> (&'a str, Option<String>) {
    let mut best: Option<(usize, &String)> = None;
    for m in markers.iter().filter(|m| !m.is_empty()) {
        if let Some(pos) = text.find(m.as_str()) {
            if best.map_or(true, |(b, _)| pos < b) {
                best = Some((pos, m));
            }
        }
    }
    match best {
        Some((pos, m)) => (&text[..pos], Some(m.clone())),
        None => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
