//! Grouping on dictionary codes: when every key of a groupby arrives dictionary-encoded (a
//! categorical column), a batch's rows are grouped by their keys' codes, and only the batch's
//! distinct combinations of values are interned.
//!
//! DataFusion's group values take a dictionary key through its row format, value by value. Here
//! each row's codes make one number (the codes in mixed radix, a null key being one more code
//! of its column), which indexes a table as long as the combinations of the batch's
//! dictionaries. A first pass over the rows lists the combinations present, in the order they
//! first appear; their values (taken from the dictionaries, and cast to the group values'
//! types where those differ: a string key a stage read as codes, whose exec groups `Utf8View`)
//! are interned in the group values, so groups are numbered as a row-by-row interning would
//! number them; a second pass gives each row its combination's group. A batch's dictionaries
//! may differ from the last batch's (each Parquet column chunk has its own), so the table is
//! made again for every batch: it is small. Where the combinations are too many for a table
//! (over 65,536, or over 16 per row of a batch of more than 64 rows), the batch's keys are
//! decoded and interned as plain columns.

use arrow::array::{AnyDictionaryArray, Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::common::Result;
use datafusion::physical_plan::aggregates::group_values::GroupValues;
use std::sync::Arc;

/// The most combinations of codes a batch's table may have before its keys are decoded.
const MAX_COMBINATIONS: usize = 1 << 16;

/// A table may also have at most this many combinations per row of its batch (clearing a
/// slot costs far less than decoding and hashing a row's strings)...
const TABLE_PER_ROW: usize = 16;

/// ...or this many, whatever the batch's rows.
const MIN_TABLE: usize = 1024;

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

/// Adds each row's code in `dictionary` (its key, or `radix - 1` for a null key), times
/// `stride`, to the row's combination.
fn add_codes(
    combinations: &mut [u32],
    dictionary: &dyn AnyDictionaryArray,
    radix: usize,
    stride: u32,
) {
    let null_code = (radix - 1) as u32;
    let key_nulls = dictionary.keys().nulls().filter(|n| n.null_count() > 0);
    // Parquet's and most dictionaries' keys: read in place (a loop the compiler vectorizes).
    if let Some(keys) = dictionary.keys().as_primitive_opt::<Int32Type>() {
        let keys = keys.values();
        match key_nulls {
            None => {
                for (combination, &key) in combinations.iter_mut().zip(keys) {
                    *combination += key as u32 * stride;
                }
            }
            Some(nulls) => {
                for (row, (combination, &key)) in combinations.iter_mut().zip(keys).enumerate() {
                    let code = if nulls.is_valid(row) {
                        key as u32
                    } else {
                        null_code
                    };
                    *combination += code * stride;
                }
            }
        }
        return;
    }
    for (row, code) in dictionary.normalized_keys().into_iter().enumerate() {
        let code = match key_nulls.is_some_and(|n| n.is_null(row)) {
            true => null_code,
            false => code as u32,
        };
        combinations[row] += code * stride;
    }
}

impl DictionaryKeys {
    /// The schema of the group values for keys of `group_schema`: a dictionary's values'
    /// type for a dictionary, a plain key's own.
    pub fn values_schema(group_schema: &SchemaRef) -> SchemaRef {
        let fields: Vec<Field> = group_schema
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::Dictionary(_, value) => {
                    Field::new(field.name(), value.as_ref().clone(), true)
                }
                _ => field.as_ref().clone(),
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Whether every one of `keys` is a dictionary (and there is one).
    pub fn all_dictionaries(keys: &[ArrayRef]) -> bool {
        !keys.is_empty()
            && keys
                .iter()
                .all(|k| matches!(k.data_type(), DataType::Dictionary(..)))
    }

    /// `keys` as the group values' `types` (a dictionary decoded).
    pub fn decode(keys: &[ArrayRef], types: &[DataType]) -> Result<Vec<ArrayRef>> {
        keys.iter()
            .zip(types)
            .map(|(key, to)| match key.data_type() == to {
                true => Ok(Arc::clone(key)),
                false => Ok(cast(key, to)?),
            })
            .collect()
    }

    /// Gives each row of `keys` (dictionary arrays of equal length) its group in `groups`
    /// (of values of `types`), interning the new ones, into `indices`.
    pub fn intern(
        &mut self,
        keys: &[ArrayRef],
        types: &[DataType],
        groups: &mut dyn GroupValues,
        indices: &mut Vec<usize>,
    ) -> Result<()> {
        let dictionaries: Vec<_> = keys.iter().map(|k| k.as_any_dictionary()).collect();
        let rows = keys.first().map_or(0, |k| k.len());
        // Each column's codes: its dictionary's indices, and one more for a null key. The
        // table is cleared for every batch: for a batch of few rows it must stay small.
        let radices: Vec<usize> = dictionaries.iter().map(|d| d.values().len() + 1).collect();
        let most = MAX_COMBINATIONS.min(rows.saturating_mul(TABLE_PER_ROW).max(MIN_TABLE));
        let combinations = radices
            .iter()
            .try_fold(1usize, |all, &radix| all.checked_mul(radix))
            .filter(|&all| all <= most);
        let Some(combinations) = combinations else {
            return groups.intern(&Self::decode(keys, types)?, indices);
        };
        let rows = keys.first().map_or(0, |k| k.len());
        self.combinations.clear();
        self.combinations.resize(rows, 0);
        let mut stride = 1;
        for (dictionary, &radix) in dictionaries.iter().zip(&radices) {
            if radix > 1 {
                // (With no values, every key is null: a code of 0 in a radix of 1.)
                add_codes(&mut self.combinations, *dictionary, radix, stride);
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
        let values = Self::decode(&values, types)?;
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
