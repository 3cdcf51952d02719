//! Grouping on dictionary codes: when every key of a groupby arrives dictionary-encoded (a
//! categorical column), a batch's rows are grouped by their keys' codes, and only the batch's
//! distinct combinations of values are interned.
//!
//! DataFusion's group values take a dictionary key through its row format, value by value. Here
//! each row's codes make one number (the codes in mixed radix, a null key being one more code
//! of its column), which indexes a table as long as the combinations of the batch's
//! dictionaries. A first pass over the rows lists the combinations present, in the order they
//! first appear; their values (taken from the dictionaries) are interned in the group values
//! over the dictionaries' value types, so groups are numbered as a row-by-row interning would
//! number them; a second pass gives each row its combination's group. A batch's dictionaries
//! may differ from the last batch's (each Parquet column chunk has its own), so the table is
//! made again for every batch: it is small. Where the combinations are too many for a table,
//! the batch's keys are decoded and interned as plain columns.

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;
use datafusion::physical_plan::aggregates::group_values::GroupValues;
use std::sync::Arc;

/// The most combinations of codes a batch's table may have before its keys are decoded.
const MAX_COMBINATIONS: usize = 1 << 16;

/// A combination of codes no row of the batch has shown yet.
const UNSEEN: u32 = u32::MAX;

/// The grouping of rows whose keys are all dictionaries, with its scratch space.
#[derive(Default)]
pub struct DictionaryKeys {
    /// By combination of codes: its group, or [`UNSEEN`].
    table: Vec<u32>,
    /// Each row's combination.
    combinations: Vec<u32>,
    /// The combinations present, in the order they first appear.
    present: Vec<u32>,
    /// The groups of the combinations present.
    present_groups: Vec<usize>,
}

impl DictionaryKeys {
    /// The schema to make group values of for `group_schema` (the keys' columns), and the
    /// grouping, if every key is a dictionary: `None` otherwise.
    pub fn new(group_schema: &Schema) -> Option<(SchemaRef, Self)> {
        let fields = group_schema
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::Dictionary(_, value) => {
                    Some(Field::new(field.name(), value.as_ref().clone(), true))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some((Arc::new(Schema::new(fields)), Self::default()))
    }

    /// Gives each row of `keys` (dictionary arrays of equal length) its group in `groups`,
    /// interning the new ones, into `indices`.
    pub fn intern(
        &mut self,
        keys: &[ArrayRef],
        groups: &mut dyn GroupValues,
        indices: &mut Vec<usize>,
    ) -> Result<()> {
        let dictionaries: Vec<_> = keys.iter().map(|k| k.as_any_dictionary()).collect();
        // Each column's codes: its dictionary's indices, and one more for a null key.
        let radices: Vec<usize> = dictionaries.iter().map(|d| d.values().len() + 1).collect();
        let combinations = radices
            .iter()
            .try_fold(1usize, |all, &radix| all.checked_mul(radix))
            .filter(|&all| all <= MAX_COMBINATIONS);
        let Some(combinations) = combinations else {
            let decoded = keys
                .iter()
                .zip(&dictionaries)
                .map(|(key, dictionary)| cast(key, dictionary.values().data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            return groups.intern(&decoded, indices);
        };
        let rows = keys.first().map_or(0, |k| k.len());
        self.combinations.clear();
        self.combinations.resize(rows, 0);
        let mut stride = 1;
        for (dictionary, &radix) in dictionaries.iter().zip(&radices) {
            let null_code = (radix - 1) as u32;
            let key_nulls = dictionary.keys().nulls();
            if radix == 1 {
                // No values: every key is null.
                continue;
            }
            for (row, code) in dictionary.normalized_keys().into_iter().enumerate() {
                let code = match key_nulls.is_some_and(|n| n.is_null(row)) {
                    true => null_code,
                    false => code as u32,
                };
                self.combinations[row] += code * stride;
            }
            stride *= radix as u32;
        }
        self.table.clear();
        self.table.resize(combinations, UNSEEN);
        self.present.clear();
        for &combination in &self.combinations {
            let slot = &mut self.table[combination as usize];
            if *slot == UNSEEN {
                *slot = 0;
                self.present.push(combination);
            }
        }
        // The values of each combination present, column by column.
        let mut stride = 1;
        let mut values = Vec::with_capacity(keys.len());
        for (dictionary, &radix) in dictionaries.iter().zip(&radices) {
            let indices: UInt32Array = self
                .present
                .iter()
                .map(|&c| {
                    let code = (c / stride) % radix as u32;
                    (code != (radix - 1) as u32).then_some(code)
                })
                .collect();
            values.push(take(dictionary.values(), &indices, None)?);
            stride *= radix as u32;
        }
        self.present_groups.clear();
        groups.intern(&values, &mut self.present_groups)?;
        for (&combination, &group) in self.present.iter().zip(&self.present_groups) {
            self.table[combination as usize] = group as u32;
        }
        indices.clear();
        indices.extend(
            self.combinations
                .iter()
                .map(|&c| self.table[c as usize] as usize),
        );
        Ok(())
    }
}
