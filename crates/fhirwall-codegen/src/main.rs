//! The `fhirwall-codegen` command: writes or checks the generated files of the workspace; it must only ever write those files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: fhirwall-codegen [--package PATH_TO_TGZ] [--root DIR] [--check]

  --package PATH  the FHIR core package (default: ../shared/fhir-r4/hl7.fhir.r4.core-4.0.1.tgz
                  relative to the workspace root)
  --root DIR      the workspace the generated files go into (default: this workspace);
                  they are crates/fhirwall-model/src/generated/*.rs and
                  crates/fhirwall-definitions/data/r4-core.json
  --check         compare instead of writing; exit 1 naming the stale files

Exit status: 0 done (or fresh), 1 stale (with --check), 2 error.";

struct Options {
    package: PathBuf,
    root: PathBuf,
    check: bool,
}

enum Parsed {
    Run(Options),
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Parsed> {
    let mut options = Options {
        package: fhirwall_codegen::default_package_path(),
        root: fhirwall_codegen::workspace_root(),
        check: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--package" => {
                options.package = args.next().context("--package needs a path")?.into();
            }
            "--root" => options.root = args.next().context("--root needs a directory")?.into(),
            "--check" => options.check = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Parsed::Run(options))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("fhirwall-codegen: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let options = match parse_args(std::env::args().skip(1))? {
        Parsed::Help => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Parsed::Run(options) => options,
    };
    let files = fhirwall_codegen::generate(&options.package)?;
    if options.check {
        let stale = fhirwall_codegen::stale_files(&options.root, &files)?;
        if stale.is_empty() {
            println!("{} is up to date", options.root.display());
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} is stale; run `cargo run -p fhirwall-codegen`:",
            options.root.display()
        );
        for name in stale {
            eprintln!("  {name}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let written = fhirwall_codegen::write_files(&options.root, &files)?;
    if written.is_empty() {
        println!("{} already up to date", options.root.display());
    } else {
        for name in written {
            println!("wrote {}", options.root.join(name).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
