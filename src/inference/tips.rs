//! Short tips for a result, from the catalogue in the model folder, shaped by diet tags.

use std::{fmt, str::FromStr};

use serde::Deserialize;

/// Diets a partner can declare per job; they change which tips are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DietTag {
    LowSodium,
    LowSugar,
    Vegetarian,
    Vegan,
    Halal,
    Pregnancy,
    LowFiber,
    IodineRestricted,
}

impl DietTag {
    pub const ALL: [DietTag; 8] = [
        Self::LowSodium,
        Self::LowSugar,
        Self::Vegetarian,
        Self::Vegan,
        Self::Halal,
        Self::Pregnancy,
        Self::LowFiber,
        Self::IodineRestricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LowSodium => "low_sodium",
            Self::LowSugar => "low_sugar",
            Self::Vegetarian => "vegetarian",
            Self::Vegan => "vegan",
            Self::Halal => "halal",
            Self::Pregnancy => "pregnancy",
            Self::LowFiber => "low_fiber",
            Self::IodineRestricted => "iodine_restricted",
        }
    }
}

impl fmt::Display for DietTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DietTag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown diet tag `{s}`"))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TipEntry {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "one")]
    pub min_score: u8,
    #[serde(default = "five")]
    pub max_score: u8,
    #[serde(default)]
    pub avoid_for: Vec<DietTag>,
    #[serde(default)]
    pub only_for: Vec<DietTag>,
    /// Text per language code.
    pub text: std::collections::BTreeMap<String, String>,
}

fn one() -> u8 {
    1
}

fn five() -> u8 {
    5
}

#[derive(Debug, Deserialize)]
pub struct TipCatalogue {
    pub version: String,
    #[serde(rename = "tip")]
    pub tips: Vec<TipEntry>,
}

/// A tip as it goes out with a result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tip {
    pub id: String,
    pub text: String,
}

pub const DEFAULT_LANG: &str = "en";
const MAX_TIPS: usize = 3;

impl TipCatalogue {
    pub fn parse(text: &str) -> Result<Self, String> {
        let catalogue: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        for tip in &catalogue.tips {
            if !tip.text.contains_key(DEFAULT_LANG) {
                return Err(format!("tip `{}` has no `{DEFAULT_LANG}` text", tip.id));
            }
        }
        Ok(catalogue)
    }

    /// 1 to 3 tips for a meal of `group` rated `rating`, for these diets, in `lang`
    /// (English where a text is missing). Tips written for one of the diets come first.
    pub fn select(&self, group: &str, rating: u8, diets: &[DietTag], lang: &str) -> Vec<Tip> {
        let applies = |tip: &&TipEntry| {
            (tip.groups.is_empty() || tip.groups.iter().any(|g| g == group))
                && (tip.min_score..=tip.max_score).contains(&rating)
                && !tip.avoid_for.iter().any(|t| diets.contains(t))
                && (tip.only_for.is_empty() || tip.only_for.iter().any(|t| diets.contains(t)))
        };
        let mut chosen: Vec<&TipEntry> = self.tips.iter().filter(applies).collect();
        // Diet-specific first, then group-specific, then general; stable within each.
        chosen.sort_by_key(|tip| (tip.only_for.is_empty(), tip.groups.is_empty()));
        chosen
            .into_iter()
            .take(MAX_TIPS)
            .map(|tip| Tip {
                id: tip.id.clone(),
                text: tip
                    .text
                    .get(lang)
                    .unwrap_or(&tip.text[DEFAULT_LANG])
                    .clone(),
            })
            .collect()
    }
}
