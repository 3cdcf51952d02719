//! [`Report`]: an error as a person reads it, each thing said once.
//!
//! Manta's error messages carry their causes' text (`filter(x > 1): Schema error: No field
//! named x`), so that a message alone says everything wherever it ends up: a log line, another
//! process, a test's assertion. Printing such an error *with* its chain of causes, as `anyhow`
//! and most reporters do, says each cause twice. [`Report`] prints the message, then only the
//! causes whose text it does not already hold; `fn main() -> Result<(), manta::Report>` prints
//! an error that way (the `manta` command line and the examples do).

use std::error::Error as StdError;
use std::fmt;

/// An error printed once: the message, then the causes it does not already say.
///
/// ```
/// fn main() -> Result<(), manta::Report> {
///     let ctx = manta::init()?;
///     let ds = ctx.range(10);
///     println!("{}", ds.count()?);
///     Ok(())
/// }
/// ```
pub struct Report(Box<dyn StdError + Send + Sync + 'static>);

impl<E: StdError + Send + Sync + 'static> From<E> for Report {
    fn from(error: E) -> Self {
        Report(Box::new(error))
    }
}

impl Report {
    /// A report of an error that is already boxed, or of a message.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Report(error.into())
    }

    /// The error reported.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

/// `error` and its causes as one line: each cause is appended (after `: `) only if the text so
/// far does not already say it, whole or but for a leading kind (`sql parser error: `).
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        let gist = said
            .split_once(": ")
            .map_or(said.as_str(), |(_, rest)| rest);
        if !said.is_empty() && !text.contains(&said) && !text.contains(gist) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    text
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(self.0.as_ref()))
    }
}

impl fmt::Debug for Report {
    /// What `main` prints after `Error: `: the same as `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}: {source}")]
    struct Outer {
        path: String,
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no such file")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("the job failed")]
    struct Terse {
        #[source]
        cause: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("sql parser error: found EOF")]
    struct Parse;

    #[derive(Debug, thiserror::Error)]
    #[error("SQL error: Parse(\"found EOF\")")]
    struct Sql {
        #[source]
        cause: Parse,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once_and_a_new_one_is_added() {
        let repeated = Report::from(Outer {
            path: "a.csv".into(),
            source: Inner,
        });
        assert_eq!(repeated.to_string(), "reading a.csv: no such file");
        assert_eq!(format!("{repeated:?}"), "reading a.csv: no such file");
        let terse = Report::from(Terse { cause: Inner });
        assert_eq!(terse.to_string(), "the job failed: no such file");
        let kind_aside = Report::from(Sql { cause: Parse });
        assert_eq!(kind_aside.to_string(), "SQL error: Parse(\"found EOF\")");
    }
}
