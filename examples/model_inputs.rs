//! Writes the model inputs marklens makes of the images a manifest lists: the
//! tensors `models/quantize_int8.py` calibrates the int8 model on.
//!
//! ```sh
//! cargo run --release --example model_inputs -- MANIFEST.csv SPLIT EVERY OUT.f32
//! ```
//!
//! `MANIFEST.csv` is a gallery or query manifest of the benchmark (`file` relative to
//! the manifest's folder, `split`); only rows of `SPLIT` are read (`-` for all), and of
//! those every `EVERY`-th. `OUT.f32` receives each image's views as the built-in
//! model's preprocessing makes them (mark found, knockouts looked for), one
//! `[3, 224, 224]` block of little-endian f32 per view.

use anyhow::{Context, Result, bail};
use marklens::bench::retrieval::read_manifest;
use marklens::embed::ModelSpec;
use marklens::imaging::{Limits, decode};
use std::io::Write;
use std::path::Path;

#[derive(serde::Deserialize)]
struct Row {
    file: String,
    #[serde(default)]
    split: String,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, split, every, out] = args.as_slice() else {
        bail!("usage: model_inputs MANIFEST.csv SPLIT EVERY OUT.f32");
    };
    let manifest = Path::new(manifest);
    let every: usize = match every.parse() {
        Ok(n) if n > 0 => n,
        _ => bail!("EVERY must be a positive number, not {every:?}"),
    };
    let base = manifest.parent().unwrap_or(Path::new("."));
    let preprocess = ModelSpec::builtin().preprocess;
    let rows: Vec<Row> = read_manifest(manifest)?;
    let mut sink = std::io::BufWriter::new(std::fs::File::create(out)?);
    let (mut images, mut views) = (0, 0);
    for row in rows
        .iter()
        .filter(|r| split == "-" || &r.split == split)
        .step_by(every)
    {
        let path = base.join(&row.file);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let image = decode(&bytes, &Limits::default())
            .with_context(|| format!("decoding {}", path.display()))?
            .image;
        let input = preprocess.input(&image, true);
        for x in &input.tensor {
            sink.write_all(&x.to_le_bytes())?;
        }
        images += 1;
        views += input.tensor.shape()[0];
    }
    sink.flush()?;
    eprintln!("{images} images, {views} views -> {out}");
    Ok(())
}
