//! A dataset as Parquet, for the datasets ecosystem (`datasets.load_dataset("parquet", ...)`,
//! pandas, polars, DuckDB): one row per sample, one row group, no compression. The text columns
//! are what training reads; `verdicts`, `metadata` and `provenance` are JSON text, as in the
//! JSON-lines copy. The bytes depend on the rows alone.

use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::error::StageError;
use super::records::Accepted;

/// The schema. Seeds are unsigned 64-bit integers.
pub const SCHEMA: &str = "message kiln_dataset {
  required binary id (STRING);
  required binary instruction_type (STRING);
  required binary instruction (STRING);
  required binary response (STRING);
  required binary instruction_finish_reason (STRING);
  required binary response_finish_reason (STRING);
  required int64 instruction_tokens;
  required int64 response_tokens;
  required int64 instruction_seed (INTEGER(64,false));
  required int64 response_seed (INTEGER(64,false));
  required binary model_sha256 (STRING);
  required binary verdicts (JSON);
  required binary metadata (JSON);
  required binary provenance (JSON);
}";

fn text(s: impl Into<String>) -> ByteArray {
    ByteArray::from(s.into().into_bytes())
}

fn finish(r: &crate::plugin::FinishReason) -> String {
    serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The Parquet bytes of `rows`.
pub fn dataset_bytes(rows: &[Accepted]) -> Result<Vec<u8>, StageError> {
    let err = |e: parquet::errors::ParquetError| StageError::Invalid(format!("writing the Parquet copy of the dataset: {e}"));
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(err)?);
    let props = Arc::new(WriterProperties::builder().set_created_by(format!("kiln {}", env!("CARGO_PKG_VERSION"))).build());
    let mut buf = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut buf, schema, props).map_err(err)?;
    let mut group = writer.next_row_group().map_err(err)?;
    let mut column = 0usize;
    while let Some(mut col) = group.next_column().map_err(err)? {
        let strings = |f: &dyn Fn(&Accepted) -> String| -> Vec<ByteArray> { rows.iter().map(|r| text(f(r))).collect() };
        let json = |f: &dyn Fn(&Accepted) -> serde_json::Value| -> Vec<ByteArray> {
            rows.iter().map(|r| text(serde_json::to_string(&f(r)).expect("serialises"))).collect()
        };
        let ints = |f: &dyn Fn(&Accepted) -> i64| -> Vec<i64> { rows.iter().map(f).collect() };
        let bytes: Option<Vec<ByteArray>> = match column {
            0 => Some(strings(&|r| r.sample.id.clone())),
            1 => Some(strings(&|r| r.sample.instruction_type.clone())),
            2 => Some(strings(&|r| r.sample.instruction.clone())),
            3 => Some(strings(&|r| r.sample.response.clone())),
            4 => Some(strings(&|r| finish(&r.sample.instruction_generation.finish_reason))),
            5 => Some(strings(&|r| finish(&r.sample.response_generation.finish_reason))),
            10 => Some(strings(&|r| r.provenance.model_sha256.clone())),
            11 => Some(json(&|r| serde_json::to_value(&r.sample.verdicts).expect("serialises"))),
            12 => Some(json(&|r| serde_json::to_value(&r.sample.metadata).expect("serialises"))),
            13 => Some(json(&|r| serde_json::to_value(&r.provenance).expect("serialises"))),
            _ => None,
        };
        match bytes {
            Some(v) => {
                col.typed::<ByteArrayType>().write_batch(&v, None, None).map_err(err)?;
            }
            None => {
                let v = match column {
                    6 => ints(&|r| r.sample.instruction_generation.completion_tokens as i64),
                    7 => ints(&|r| r.sample.response_generation.completion_tokens as i64),
                    // Unsigned 64-bit values travel in int64's bits, as the logical type says.
                    8 => ints(&|r| r.provenance.instruction_seed as i64),
                    9 => ints(&|r| r.provenance.response_seed as i64),
                    c => return Err(StageError::Invalid(format!("the Parquet schema has an unexpected column {c}"))),
                };
                col.typed::<Int64Type>().write_batch(&v, None, None).map_err(err)?;
            }
        }
        col.close().map_err(err)?;
        column += 1;
    }
    group.close().map_err(err)?;
    writer.close().map_err(err)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    use super::*;

    #[test]
    fn rows_read_back_with_every_column() {
        let line = r#"{"sample":{"id":"s00001-00002","instruction_type":"qa","instruction":"Name a river. ✓","response":"The Nile.","instruction_generation":{"finish_reason":"stop","prompt_tokens":5,"completion_tokens":7,"max_tokens":64},"response_generation":{"finish_reason":"eos","prompt_tokens":9,"completion_tokens":3,"max_tokens":64},"verdicts":[],"metadata":{"k":"v"}},"provenance":{"run_id":"r","kiln_revision":null,"kiln_dirty":null,"kiln_version":"0.1.0","model_sha256":"ab","plugins":[],"config_hash":"h","run_seed":1,"instruction_seed":18446744073709551615,"response_seed":3,"sampling":{},"instruction_generated_at":"","response_generated_at":"","accepted_at":""}}"#;
        let a: Accepted = serde_json::from_str(line).unwrap();
        let bytes = dataset_bytes(&[a.clone(), a]).unwrap();
        assert_eq!(bytes, dataset_bytes(&[serde_json::from_str(line).unwrap(), serde_json::from_str(line).unwrap()]).unwrap());
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, &bytes).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let row = reader.get_row_iter(None).unwrap().next().unwrap().unwrap();
        let cols: Vec<(String, Field)> = row.get_column_iter().map(|(n, f)| (n.clone(), f.clone())).collect();
        let get = |n: &str| cols.iter().find(|(c, _)| c == n).unwrap().1.clone();
        assert_eq!(get("instruction"), Field::Str("Name a river. ✓".into()));
        assert_eq!(get("response_finish_reason"), Field::Str("eos".into()));
        assert_eq!(get("instruction_tokens"), Field::Long(7));
        assert_eq!(get("instruction_seed"), Field::ULong(u64::MAX));
        assert_eq!(get("metadata"), Field::Str(r#"{"k":"v"}"#.into()));
    }
}
