//! Deterministic answers: what a choice "generates", decided up front.
//!
//! A token is one vocabulary word with a leading space. The whole answer of a choice (its text,
//! token boundaries, finish reason and stop reason) is computed before anything is sent, from
//! the seed alone. Streaming then slices that answer token by token, so the concatenated stream
//! is byte-for-byte the non-streaming content for the same seed and parameters, even when a stop
//! string spans several tokens (vLLM withholds text that could start a stop string; knowing the
//! final cut in advance has the same visible effect).

/// Words the simulator "speaks". Lower-case ASCII only, so every byte offset is a char boundary
/// and no JSON escaping is ever needed for generated text.
const VOCAB: &[&str] = &[
    "the",
    "model",
    "answer",
    "token",
    "stream",
    "gateway",
    "worker",
    "request",
    "cache",
    "prefix",
    "queue",
    "latency",
    "batch",
    "context",
    "length",
    "prompt",
    "simple",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "and",
    "then",
    "returns",
    "with",
    "a",
    "small",
    "value",
    "of",
    "data",
    "from",
    "each",
    "layer",
    "to",
    "next",
    "one",
    "is",
    "it",
    "we",
    "can",
    "see",
    "that",
    "this",
    "works",
    "well",
    "under",
    "load",
    "when",
    "many",
    "users",
    "send",
    "their",
    "questions",
    "at",
    "once",
    "so",
    "scheduler",
    "keeps",
    "running",
    "sequences",
    "busy",
    "while",
    "waiting",
    "ones",
    "line",
    "up",
    "in",
    "order",
    "memory",
    "blocks",
    "are",
    "shared",
    "between",
    "similar",
    "prompts",
    "which",
    "saves",
    "time",
    "on",
    "prefill",
    "for",
    "long",
    "documents",
    "every",
    "step",
    "adds",
    "new",
    "word",
    "until",
    "limit",
    "or",
    "stop",
    "string",
    "ends",
    "output",
    "server",
    "sends",
    "chunks",
    "as",
    "events",
    "via",
    "http",
    "client",
    "reads",
    "them",
    "assembles",
    "full",
    "text",
    "result",
    "looks",
    "like",
    "real",
    "language",
    "but",
    "means",
    "nothing",
    "much",
    "all",
    "good",
    "enough",
    "tests",
    "benchmarks",
];

/// Why a choice ended, as vLLM reports it in `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Natural end (EOS) or a stop string.
    Stop,
    /// The token limit cut the answer.
    Length,
}

impl Finish {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Inputs that shape one choice's answer.
#[derive(Debug, Clone)]
pub(crate) struct GenParams<'a> {
    pub seed: u64,
    /// Natural answer length range (inclusive), from `SimConfig::output_tokens`.
    pub natural: (u32, u32),
    /// Resolved `max_tokens` (>= 1).
    pub max_tokens: u32,
    pub min_tokens: u32,
    pub ignore_eos: bool,
    pub stop: &'a [String],
    pub include_stop_str_in_output: bool,
}

/// One choice's complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Final text (already cut at a stop string).
    pub text: String,
    /// End offset in `text` of each generated token, clipped to `text.len()`; its length is the
    /// number of completion tokens.
    pub ends: Vec<u32>,
    pub finish: Finish,
    /// The stop string that ended the choice, if any (vLLM `stop_reason`).
    pub stop_reason: Option<String>,
}

impl Answer {
    pub(crate) fn tokens(&self) -> u32 {
        u32::try_from(self.ends.len()).unwrap_or(u32::MAX)
    }

    /// Text delta carried by token `k` (0-based); empty past a stop-string cut.
    pub(crate) fn delta(&self, k: usize) -> &str {
        let end = self.ends.get(k).copied().unwrap_or(0) as usize;
        let start = if k == 0 {
            0
        } else {
            self.ends.get(k - 1).copied().unwrap_or(0) as usize
        };
        self.text.get(start..end).unwrap_or("")
    }
}

/// Generates one choice's answer; a pure function of `p`.
pub(crate) fn generate(p: &GenParams<'_>) -> Answer {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let (lo, hi) = (p.natural.0.max(1), p.natural.1.max(p.natural.0.max(1)));
    let natural = rng.u32(lo..=hi);
    let wanted = if p.ignore_eos {
        u32::MAX
    } else {
        natural.max(p.min_tokens)
    };
    let target = wanted.min(p.max_tokens.max(1));
    let mut finish = if wanted > target {
        Finish::Length
    } else {
        Finish::Stop
    };
    let longest_stop = p.stop.iter().map(String::len).max().unwrap_or(0);
    let mut text = String::with_capacity(target as usize * 8);
    let mut ends: Vec<u32> = Vec::with_capacity(target as usize);
    let mut stop_reason = None;
    for k in 0..target {
        let before = text.len();
        text.push(' ');
        text.push_str(VOCAB[rng.usize(..VOCAB.len())]);
        ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        // vLLM only looks for stop strings once more than min_tokens tokens exist.
        if longest_stop == 0 || k < p.min_tokens {
            continue;
        }
        // Only the new text (plus an overlap for strings spanning tokens) can hold a new match.
        let from = before.saturating_sub(longest_stop - 1);
        if let Some((s, at)) = p
            .stop
            .iter()
            .find_map(|s| text[from..].find(s.as_str()).map(|i| (s, from + i)))
        {
            let cut = if p.include_stop_str_in_output {
                at + s.len()
            } else {
                at
            };
            text.truncate(cut);
            let cut = u32::try_from(cut).unwrap_or(u32::MAX);
            for e in &mut ends {
                *e = (*e).min(cut);
            }
            finish = Finish::Stop;
            stop_reason = Some(s.clone());
            break;
        }
    }
    Answer {
        text,
        ends,
        finish,
        stop_reason,
    }
}

/// A deterministic unit vector of `dim` floats for an embedding input.
pub(crate) fn embedding(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64, max: u32) -> GenParams<'static> {
        GenParams {
            seed,
            natural: (16, 32),
            max_tokens: max,
            min_tokens: 0,
            ignore_eos: false,
            stop: &[],
            include_stop_str_in_output: false,
        }
    }

    #[test]
    fn deterministic_and_within_range() {
        let a = generate(&params(42, 1000));
        assert_eq!(a, generate(&params(42, 1000)));
        assert!((16..=32).contains(&a.tokens()));
        assert_eq!(a.finish, Finish::Stop);
        assert_ne!(a.text, generate(&params(43, 1000)).text);
        let joined: String = (0..a.ends.len()).map(|k| a.delta(k)).collect();
        assert_eq!(joined, a.text);
    }

    #[test]
    fn limit_cuts_with_length() {
        let a = generate(&params(1, 3));
        assert_eq!(a.tokens(), 3);
        assert_eq!(a.finish, Finish::Length);
        assert!(a.text.starts_with(' '));
        assert_eq!(a.text.split(' ').count(), 4);
    }

    #[test]
    fn min_tokens_and_ignore_eos_extend() {
        let mut p = params(5, 100);
        p.min_tokens = 50;
        let a = generate(&p);
        assert_eq!(a.tokens(), 50);
        assert_eq!(a.finish, Finish::Stop);
        p.min_tokens = 0;
        p.ignore_eos = true;
        let a = generate(&p);
        assert_eq!(a.tokens(), 100);
        assert_eq!(a.finish, Finish::Length);
    }

    #[test]
    fn stop_string_spanning_tokens_cuts_the_text() {
        let full = generate(&params(9, 1000));
        // Pick a stop string made of the end of token 3 and the start of token 4.
        let t3 = full.delta(3).to_string();
        let t4 = full.delta(4).to_string();
        let stop = format!("{}{}", &t3[t3.len() - 2..], &t4[..2]);
        let stops = [stop.clone()];
        let mut p = params(9, 1000);
        p.stop = &stops;
        let a = generate(&p);
        let at = full.text.find(&stop).unwrap_or(usize::MAX);
        assert!(at <= full.text.len());
        assert_eq!(a.text, full.text[..at]);
        assert_eq!(a.finish, Finish::Stop);
        assert_eq!(a.stop_reason.as_deref(), Some(stop.as_str()));
        let joined: String = (0..a.ends.len()).map(|k| a.delta(k)).collect();
        assert_eq!(joined, a.text);
        p.include_stop_str_in_output = true;
        assert!(generate(&p).text.ends_with(&stop));
    }

    #[test]
    fn embedding_is_unit_length() {
        let v = embedding(3, 32);
        assert_eq!(v.len(), 32);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
        assert_eq!(v, embedding(3, 32));
    }
}
