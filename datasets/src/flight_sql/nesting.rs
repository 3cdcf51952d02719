//! A limit on how deeply a client's SQL nests, checked before it is planned.
//!
//! Planning and running an expression recurse once per level of its tree, and a left-nested
//! chain (`1+1+...+1`, or thousands of `AND`s) parses without limit: a 30 KB query nests some
//! 15,000 levels, more than a thread's stack holds, and one anonymous query could abort the
//! process. sqlparser's own recursion limit covers parentheses and prefix operators; chains of
//! binary operators are what it leaves, so [`check`] counts them, over the query's tokens (no
//! recursion): at each parenthesis level, the operators since the last comma or clause
//! keyword, summed over the enclosing levels, plus the levels themselves. That is at least the
//! depth of the expression tree (and at most about twice it), so a query over [`MAX_NESTING`]
//! is refused with `INVALID_ARGUMENT` and everything under it plans on a normal stack.
//!
//! ```
//! use manta_datasets::flight_sql::nesting::{MAX_NESTING, nesting};
//!
//! assert!(nesting("SELECT a + b, c * (d - e) FROM t WHERE x = 1 AND y = 2") < 10);
//! let chain = format!("SELECT 1{}", "+1".repeat(5000));
//! assert!(nesting(&chain) > MAX_NESTING);
//! ```

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use tonic::Status;

/// The deepest nesting [`check`] lets through.
pub const MAX_NESTING: usize = 1000;

/// The nesting of `sql` as described in the module doc; 0 if it does not tokenize (the
/// planner then says what is wrong with it).
pub fn nesting(sql: &str) -> usize {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return 0;
    };
    // Operators since the last separator, one counter per open parenthesis.
    let mut levels = vec![0usize];
    let mut total = 0usize;
    let mut deepest = 0usize;
    for token in &tokens {
        match token {
            Token::LParen => levels.push(0),
            Token::RParen if levels.len() > 1 => total -= levels.pop().unwrap_or(0),
            Token::Comma => reset(&mut levels, &mut total),
            Token::Word(word) => match word.keyword {
                Keyword::AND | Keyword::OR | Keyword::LIKE | Keyword::ILIKE | Keyword::IS => {
                    bump(&mut levels, &mut total)
                }
                Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::ORDER
                | Keyword::HAVING
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::ON
                | Keyword::LIMIT
                | Keyword::UNION => reset(&mut levels, &mut total),
                _ => {}
            },
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret => bump(&mut levels, &mut total),
            _ => {}
        }
        deepest = deepest.max(total + levels.len());
    }
    deepest
}

fn bump(levels: &mut [usize], total: &mut usize) {
    if let Some(current) = levels.last_mut() {
        *current += 1;
        *total += 1;
    }
}

fn reset(levels: &mut [usize], total: &mut usize) {
    if let Some(current) = levels.last_mut() {
        *total -= *current;
        *current = 0;
    }
}

/// Refuses `sql` if it nests deeper than [`MAX_NESTING`].
pub fn check(sql: &str) -> Result<(), Status> {
    let depth = nesting(sql);
    if depth > MAX_NESTING {
        return Err(Status::invalid_argument(format!(
            "the query nests about {depth} operators deep, past the limit of {MAX_NESTING}: \
             split it, or use IN (...) lists instead of chains of OR"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_count_and_separators_reset() {
        assert_eq!(nesting("SELECT 1"), 1);
        assert!(nesting(&format!("SELECT 1{}", "+1".repeat(100))) >= 100);
        assert!(nesting(&format!("SELECT x FROM t WHERE a{}", " AND a".repeat(300))) >= 300);
        // A long select list or IN list is wide, not deep.
        let wide = format!("SELECT {} FROM t", vec!["a + 1"; 5000].join(", "));
        assert!(nesting(&wide) < 5);
        let listed = format!("SELECT * FROM t WHERE a IN ({})", vec!["1"; 5000].join(","));
        assert!(nesting(&listed) < 5);
        // Parentheses nest the counts.
        assert!(nesting("SELECT (a + (b + (c + d)))") >= 6);
        assert_eq!(nesting("SELECT 'unterminated"), 0);
    }
}
