//! The BPE encodings and which model uses which.

use std::str::FromStr;

/// An OpenAI byte-pair encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5, the o-series.
    O200kBase,
    /// GPT-4, GPT-3.5, the `text-embedding-3` and `ada-002` embeddings.
    Cl100kBase,
}

/// Model-name prefixes of `o200k_base` models; checked before
/// [`CL100K_PREFIXES`], which holds shorter prefixes of some of them.
const O200K_PREFIXES: [&str; 10] = [
    "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-", "gpt-oss", "o1", "o3", "o4", "codex",
];

/// Model-name prefixes of `cl100k_base` models.
const CL100K_PREFIXES: [&str; 6] = [
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-",
    "davinci-002",
    "babbage-002",
];

impl Encoding {
    /// The encoding OpenAI uses for `model`, when the name is one it knows.
    pub fn for_model(model: &str) -> Option<Self> {
        if O200K_PREFIXES.iter().any(|p| model.starts_with(p)) {
            Some(Self::O200kBase)
        } else if CL100K_PREFIXES.iter().any(|p| model.starts_with(p)) {
            Some(Self::Cl100kBase)
        } else {
            None
        }
    }

    /// The encoding's name, as `tiktoken` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::O200kBase => "o200k_base",
            Self::Cl100kBase => "cl100k_base",
        }
    }

    /// The tokenizer (built on first use: about 40 ms, once per process).
    pub fn tokenizer(self) -> &'static bpe_openai::Tokenizer {
        match self {
            Self::O200kBase => bpe_openai::o200k_base(),
            Self::Cl100kBase => bpe_openai::cl100k_base(),
        }
    }

    /// Tokens in `text`.
    pub fn count(self, text: &str) -> usize {
        crate::pieces::count(self, text)
    }
}

impl FromStr for Encoding {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "o200k_base" => Ok(Self::O200kBase),
            "cl100k_base" => Ok(Self::Cl100kBase),
            other => Err(format!(
                "unknown encoding '{other}' (o200k_base or cl100k_base)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_their_encodings() {
        for model in ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "o3-mini", "gpt-5"] {
            assert_eq!(
                Encoding::for_model(model),
                Some(Encoding::O200kBase),
                "{model}"
            );
        }
        for model in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
        ] {
            assert_eq!(
                Encoding::for_model(model),
                Some(Encoding::Cl100kBase),
                "{model}"
            );
        }
        assert_eq!(Encoding::for_model("llama-3"), None);
    }

    #[test]
    fn counts_match_tiktoken() {
        // Reference counts from tiktoken.
        assert_eq!(Encoding::O200kBase.count("Hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count("Hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count("tiktoken is great!"), 6);
        assert_eq!(Encoding::O200kBase.count(""), 0);
    }

    #[test]
    fn names_round_trip() {
        for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
            assert_eq!(e.name().parse(), Ok(e));
        }
        assert!("p50k_base".parse::<Encoding>().is_err());
    }
}
