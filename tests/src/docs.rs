//! The project's documentation as tests read it: the fenced code blocks of
//! a section, so that a test runs what a reader is told to run.

/// The blocks fenced as `language` in the section under `heading` (up to
/// the next heading of the same or a higher level), in order.
pub fn fenced_blocks(markdown: &str, heading: &str, language: &str) -> anyhow::Result<Vec<String>> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = markdown
        .lines()
        .skip_while(|line| line.trim_end() != heading);
    if lines.next().is_none() {
        anyhow::bail!("no section {heading:?}");
    }
    let mut blocks = Vec::new();
    // The block being read, and whether it is one of `language`.
    let mut open: Option<(String, bool)> = None;
    for line in lines {
        match &mut open {
            Some((body, wanted)) => {
                if line.starts_with("```") {
                    if *wanted {
                        blocks.push(std::mem::take(body));
                    }
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            None if line.starts_with("```") => {
                open = Some((String::new(), line.trim_end() == format!("```{language}")));
            }
            None => {
                let hashes = line.chars().take_while(|c| *c == '#').count();
                if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
                    break;
                }
            }
        }
    }
    anyhow::ensure!(open.is_none(), "an unclosed block under {heading:?}");
    Ok(blocks)
}

/// The tests `markdown` names as proof: code spans of the form
/// `module::test_name` (any depth) whose last part reads as a sentence.
pub fn named_tests(markdown: &str) -> Vec<String> {
    let ident = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    markdown
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            let parts: Vec<&str> = span.split("::").collect();
            parts.len() >= 2
                && parts.iter().all(|p| ident(p))
                && parts
                    .last()
                    .is_some_and(|name| name.matches('_').count() >= 3)
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_one_section_only() {
        let text = "# T\n## A\n```sh\none\n```\n### A.1\n```sh\ntwo\n```\n```yaml\n# a comment\nk: v\n```\n## B\n```sh\nthree\n```\n";
        assert_eq!(
            fenced_blocks(text, "## A", "sh").unwrap(),
            ["one\n", "two\n"]
        );
        assert_eq!(
            fenced_blocks(text, "## A", "yaml").unwrap(),
            ["# a comment\nk: v\n"]
        );
        assert_eq!(fenced_blocks(text, "## B", "sh").unwrap(), ["three\n"]);
        assert!(fenced_blocks(text, "## C", "sh").is_err());
    }

    #[test]
    fn tests_named_as_proof() {
        let text = "holds (`hold::a_call_is_held_for_ever`, `a::b::c_is_d_too`); \
                    not `airlock up`, `std::io`, `make test`, `x::Not_a_test_name`";
        assert_eq!(
            named_tests(text),
            ["hold::a_call_is_held_for_ever", "a::b::c_is_d_too"]
        );
    }
}
