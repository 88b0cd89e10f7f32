//! Which rules of a policy can apply to a call, found by what the call
//! addresses instead of by trying every rule. Each rule is filed by its
//! patterns for each kind of target (tools, resources, prompts) — or, naming
//! none, by its method patterns: a literal pattern under its name; a glob
//! under the literal text before its first `*`, or, when its only `*` comes
//! first, after it; any other glob (`*secret*`) where every call tries it.
//! Evaluation still checks each candidate in full, so the index only skips
//! rules that cannot match, and candidates come in the rules' own order.

use crate::mcp::Target;
use crate::model::Rule;
use std::collections::HashMap;

/// Policies of this many rules or fewer try them all: for them, looking
/// names up costs more than matching each rule.
const TRY_ALL_UP_TO: usize = 16;

#[derive(Debug, Clone)]
pub(crate) enum RuleIndex {
    TryAll(usize),
    Filed(Box<Filed>),
}

impl RuleIndex {
    pub(crate) fn new(rules: &[Rule]) -> RuleIndex {
        if rules.len() <= TRY_ALL_UP_TO {
            RuleIndex::TryAll(rules.len())
        } else {
            RuleIndex::Filed(Box::new(Filed::new(rules)))
        }
    }

    /// The indices of the rules that may apply to a call of `method` on
    /// `target`, ascending.
    pub(crate) fn candidates(&self, method: &str, target: &Target) -> Candidates {
        match self {
            RuleIndex::TryAll(rules) => Candidates::All(0..*rules),
            RuleIndex::Filed(filed) => {
                Candidates::Found(filed.candidates(method, target).into_iter())
            }
        }
    }
}

pub(crate) enum Candidates {
    All(std::ops::Range<usize>),
    Found(std::vec::IntoIter<usize>),
}

impl Iterator for Candidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::All(all) => all.next(),
            Candidates::Found(found) => found.next(),
        }
    }
}

/// Every rule filed by its patterns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filed {
    tools: PatternIndex,
    resources: PatternIndex,
    prompts: PatternIndex,
    /// Rules naming no tool, resource or prompt, by their method patterns.
    untargeted: PatternIndex,
}

/// Rules by the patterns of one kind that they name.
#[derive(Debug, Clone, Default)]
struct PatternIndex {
    by_name: HashMap<String, Vec<usize>>,
    by_prefix: Affixes,
    by_suffix: Affixes,
    /// Rules tried for every name: a glob with a `*` first and another
    /// after, or no pattern at all.
    every_name: Vec<usize>,
}

/// Rules by the literal start (or end) of a glob, with the lengths those
/// take, ascending: a name is looked up by its affixes of these lengths only.
#[derive(Debug, Clone, Default)]
struct Affixes {
    rules: HashMap<String, Vec<usize>>,
    lengths: Vec<usize>,
}

impl Affixes {
    fn file(&mut self, affix: &str, rule: usize) {
        push(self.rules.entry(affix.to_string()).or_default(), rule);
        if let Err(at) = self.lengths.binary_search(&affix.len()) {
            self.lengths.insert(at, affix.len());
        }
    }

    /// Adds the rules filed under `name`'s affix of each length; `start`
    /// says where an affix of a length starts.
    fn lookup(&self, name: &str, start: impl Fn(usize) -> Option<usize>, found: &mut Vec<usize>) {
        for &length in &self.lengths {
            // None past the name's end, or inside one of its characters.
            let Some(affix) = start(length).and_then(|at| name.get(at..at + length)) else {
                continue;
            };
            found.extend(self.rules.get(affix).into_iter().flatten());
        }
    }
}

fn push(rules: &mut Vec<usize>, rule: usize) {
    if rules.last() != Some(&rule) {
        rules.push(rule);
    }
}

impl PatternIndex {
    /// Files `rule` under each of `patterns`; with none, under every name.
    fn file(&mut self, rule: usize, patterns: &[String]) {
        if patterns.is_empty() {
            push(&mut self.every_name, rule);
        }
        for pattern in patterns {
            match (pattern.find('*'), pattern.rfind('*')) {
                (None, _) => push(self.by_name.entry(pattern.clone()).or_default(), rule),
                (Some(0), Some(0)) if pattern.len() > 1 => {
                    self.by_suffix.file(&pattern[1..], rule);
                }
                (Some(0), _) => push(&mut self.every_name, rule),
                (Some(star), _) => self.by_prefix.file(&pattern[..star], rule),
            }
        }
    }

    /// Adds the rules whose patterns may match `name` to `found`.
    fn lookup(&self, name: &str, found: &mut Vec<usize>) {
        found.extend_from_slice(&self.every_name);
        found.extend(self.by_name.get(name).into_iter().flatten());
        self.by_prefix.lookup(name, |_| Some(0), found);
        self.by_suffix
            .lookup(name, |length| name.len().checked_sub(length), found);
    }
}

impl Filed {
    fn new(rules: &[Rule]) -> Filed {
        let mut index = Filed::default();
        for (i, rule) in rules.iter().enumerate() {
            let m = &rule.matches;
            if m.tools.is_empty() && m.resources.is_empty() && m.prompts.is_empty() {
                index.untargeted.file(i, &m.methods);
                continue;
            }
            for (kind, patterns) in [
                (&mut index.tools, &m.tools),
                (&mut index.resources, &m.resources),
                (&mut index.prompts, &m.prompts),
            ] {
                // A rule naming no pattern of a kind never matches a call of it.
                if !patterns.is_empty() {
                    kind.file(i, patterns);
                }
            }
        }
        index
    }

    fn candidates(&self, method: &str, target: &Target) -> Vec<usize> {
        let mut found = Vec::new();
        self.untargeted.lookup(method, &mut found);
        match target {
            Target::None => {}
            Target::Tool(name) => self.tools.lookup(name, &mut found),
            Target::Resource(uri) => self.resources.lookup(uri, &mut found),
            Target::Prompt(name) => self.prompts.lookup(name, &mut found),
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Call, rule_matches};
    use proptest::prelude::*;
    use serde_json::json;

    fn rules(rules: serde_json::Value) -> Vec<Rule> {
        serde_json::from_value(rules).unwrap()
    }

    fn arbitrary_rules() -> impl Strategy<Value = Vec<Rule>> {
        let patterns = || {
            prop::collection::vec(
                prop::sample::select(vec![
                    "deploy",
                    "deploy_*",
                    "*_v2",
                    "*secret*",
                    "*",
                    "d*y",
                    "read_secret",
                    "ré*",
                ]),
                0..3,
            )
        };
        let methods = prop::collection::vec(
            prop::sample::select(vec!["tools/call", "tools/*", "*", "initialize", "*/read"]),
            0..2,
        );
        prop::collection::vec((methods, patterns(), patterns(), patterns()), 0..40).prop_map(
            |rules| {
                rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, (methods, tools, resources, prompts))| {
                        let strings = |v: Vec<&str>| -> Vec<String> {
                            v.into_iter().map(String::from).collect()
                        };
                        let rule = json!({
                            "name": format!("r{i}"), "action": "Allow",
                            "match": {"methods": strings(methods),
                                      "tools": strings(tools),
                                      "resources": strings(resources),
                                      "prompts": strings(prompts)}});
                        serde_json::from_value(rule).unwrap()
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn the_index_skips_no_rule_that_matches(
            rules in arbitrary_rules(),
            method in prop::sample::select(vec!["tools/call", "resources/read", "prompts/get", "initialize"]),
            kind in 0..4u8,
            name in prop::sample::select(vec!["deploy", "deploy_v2", "read_secret", "réad_v2", "dy", "x", ""]),
        ) {
            let target = match kind {
                0 => Target::None,
                1 => Target::Tool(name.into()),
                2 => Target::Resource(name.into()),
                _ => Target::Prompt(name.into()),
            };
            let call = Call { method, target: &target, arguments: None };
            let found = Filed::new(&rules).candidates(method, &target);
            let matching: Vec<usize> = (0..rules.len()).filter(|&i| rule_matches(&rules[i], &call)).collect();
            prop_assert!(matching.iter().all(|i| found.contains(i)), "found {:?}, matching {:?}", found, matching);
            prop_assert!(found.windows(2).all(|w| w[0] < w[1]), "in order, once each: {:?}", found);
        }
    }

    #[test]
    fn small_policies_try_every_rule() {
        let rules = rules(json!([{"name": "r0", "match": {"tools": ["a"]}, "action": "Allow"}]));
        let index = RuleIndex::new(&rules);
        assert_eq!(
            index
                .candidates("tools/call", &Target::Tool("b".into()))
                .collect::<Vec<_>>(),
            [0]
        );
    }

    #[test]
    fn rules_are_found_by_name_prefix_and_method() {
        let rules = rules(json!([
            {"name": "r0", "match": {"methods": ["initialize", "notifications/*"]}, "action": "Allow"},
            {"name": "r1", "match": {"tools": ["deploy", "deploy"]}, "action": "Allow"},
            {"name": "r2", "match": {"tools": ["read_*", "rea*"]}, "action": "Deny"},
            {"name": "r3", "match": {"tools": ["status", "deploy"], "prompts": ["p"]}, "action": "Allow"},
            {"name": "r4", "match": {"resources": ["file:///*"]}, "action": "Allow"},
            {"name": "r5", "match": {}, "action": "Deny"},
            {"name": "r6", "match": {"tools": ["*_v2"]}, "action": "Deny"},
            {"name": "r7", "match": {"methods": ["*"], "tools": ["x"]}, "action": "Deny"},
            {"name": "r8", "match": {"tools": ["*secret*"]}, "action": "Deny"},
        ]));
        let index = Filed::new(&rules);
        let call = |method: &str, target: Target| index.candidates(method, &target);
        let tool = |name: &str| call("tools/call", Target::Tool(name.into()));
        assert_eq!(tool("deploy"), [1, 3, 5, 8]);
        assert_eq!(tool("status"), [3, 5, 8]);
        assert_eq!(tool("read_secret"), [2, 5, 8]);
        assert_eq!(tool("deploy_v2"), [5, 6, 8]);
        assert_eq!(tool("re"), [5, 8], "shorter than every affix");
        assert_eq!(
            tool("réad_v2"),
            [5, 6, 8],
            "an affix length inside a character"
        );
        assert_eq!(tool("x"), [5, 7, 8]);
        assert_eq!(call("prompts/get", Target::Prompt("p".into())), [3, 5]);
        assert_eq!(
            call("resources/read", Target::Resource("file:///etc".into())),
            [4, 5]
        );
        assert_eq!(call("initialize", Target::None), [0, 5]);
        assert_eq!(call("notifications/initialized", Target::None), [0, 5]);
        assert_eq!(call("ping", Target::None), [5]);
    }
}
