//! The `fhirwall` binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirwall::{ServeArgs, Settings, Verification};

// glibc's allocator spent 10-17% of the server's time on the read path (consolidation and
// chunk unlinking under many small, short-lived allocations across threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fhirwall",
    version,
    about = "A FHIR R4 server for ePHI: encrypted, audited, authenticated."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTPS FHIR server.
    Serve(Box<ServeArgs>),
    /// Manage backend-services clients (works while the server runs).
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Rotate keys: a new key-encryption key re-wraps every stored key, and a new data key
    /// encrypts new writes. Run with the server stopped.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client; prints its id alone on standard output.
    Add {
        #[arg(long, env = "FHIRWALL_DATA_DIR", default_value = "./fhirwall-data")]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A file holding the client's public JWKS.
        #[arg(
            long,
            conflicts_with = "jwks_uri",
            required_unless_present = "jwks_uri"
        )]
        jwks: Option<PathBuf>,
        /// An https URL serving the client's public JWKS.
        #[arg(long)]
        jwks_uri: Option<String>,
        /// The scopes the client may be granted, e.g. "system/*.rs".
        #[arg(long)]
        scope: String,
        /// The keyring (default: <data-dir>/keyring.json): client records are tagged with a
        /// key from it, so an edit of one outside the server is refused.
        #[arg(long, env = "FHIRWALL_KEYRING")]
        keyring: Option<PathBuf>,
    },
    /// List registered clients.
    List {
        #[arg(long, env = "FHIRWALL_DATA_DIR", default_value = "./fhirwall-data")]
        data_dir: PathBuf,
    },
    /// Remove a client; its tokens stop being issued at once.
    Remove {
        #[arg(long, env = "FHIRWALL_DATA_DIR", default_value = "./fhirwall-data")]
        data_dir: PathBuf,
        client_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate the KEK and the tenant data key.
    Rotate {
        #[arg(long, env = "FHIRWALL_DATA_DIR", default_value = "./fhirwall-data")]
        data_dir: PathBuf,
        /// The keyring (default: <data-dir>/keyring.json).
        #[arg(long, env = "FHIRWALL_KEYRING")]
        keyring: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the whole trail; exits non-zero naming the first bad record.
    Verify {
        #[arg(long, env = "FHIRWALL_DATA_DIR", default_value = "./fhirwall-data")]
        data_dir: PathBuf,
        /// The keyring (default: <data-dir>/keyring.json).
        #[arg(long, env = "FHIRWALL_KEYRING")]
        keyring: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fhirwall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhirwall: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::resolve(*args)?;
            fhirwall::serve(settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client { command } => match command {
            ClientCommand::Add {
                data_dir,
                name,
                jwks,
                jwks_uri,
                scope,
                keyring,
            } => {
                let keyring = keyring.unwrap_or_else(|| data_dir.join("keyring.json"));
                let jwks = jwks.as_deref().map(fhirwall::read_jwks_file).transpose()?;
                let id = fhirwall::client_add(
                    &data_dir,
                    &keyring,
                    fhirwall::ClientRegistration {
                        name,
                        jwks,
                        jwks_uri,
                        scope,
                    },
                )
                .await?;
                println!("{id}");
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::List { data_dir } => {
                for client in fhirwall::client_list(&data_dir).await? {
                    let keys = client
                        .jwks_uri
                        .clone()
                        .unwrap_or_else(|| "registered JWKS".into());
                    println!(
                        "{}\t{}\t{}\t{}",
                        client.client_id, client.name, client.scope, keys
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Remove {
                data_dir,
                client_id,
            } => {
                if fhirwall::client_remove(&data_dir, &client_id).await? {
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("fhirwall: no client {client_id}");
                    Ok(ExitCode::FAILURE)
                }
            }
        },
        Command::Keys {
            command: KeysCommand::Rotate { data_dir, keyring },
        } => {
            let keyring = keyring.unwrap_or_else(|| data_dir.join("keyring.json"));
            let rotation = fhirwall::rotate_keys(&data_dir, &keyring).await?;
            println!(
                "new key-encryption key {}; {} stored keys re-wrapped; new data key {}",
                rotation.new_kek, rotation.rewrapped, rotation.new_data_key
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { data_dir, keyring },
        } => {
            let keyring = keyring.unwrap_or_else(|| data_dir.join("keyring.json"));
            match fhirwall::audit_verify(&data_dir, &keyring).await? {
                Verification::Intact { records } => {
                    println!("audit trail intact: {records} records verified");
                    Ok(ExitCode::SUCCESS)
                }
                Verification::Broken { seq, reason } => {
                    println!("audit trail BROKEN at record {seq}: {reason}");
                    Ok(ExitCode::from(2))
                }
                Verification::Unaudited { reference } => {
                    println!(
                        "audit trail BROKEN: {reference} is stored but its write has no audit record (records were removed)"
                    );
                    Ok(ExitCode::from(2))
                }
                Verification::Tampered { what } => {
                    println!("stored data TAMPERED: {what}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
