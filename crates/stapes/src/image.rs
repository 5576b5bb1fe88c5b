//! `stapes image ...` and `stapes image alias ...`, as `incus image` (6.0) does them.
//!
//! ```text
//!  import FILE [ROOTFS] [remote:] [key=value...] [--alias A] [--public] [--reuse]
//!         POST /1.0/images, the file (or metadata + rootfs, multipart) streamed from disk
//!         -> operation -> metadata.fingerprint -> "Image imported with fingerprint: FP"
//!         then GET /1.0/images/aliases?recursion=1, DELETE the aliases named, POST them
//!  export IMAGE [TARGET]  GET /1.0/images/FP/export streamed to FP(.root) or TARGET, checked
//!  list / info / show / edit / delete / get-property / set-property / unset-property
//!  alias create / delete / list / rename
//! ```
//!
//! An image is named by alias or fingerprint (prefix): an alias that exists wins, as in
//! Incus's `dereferenceAlias`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use api::types::{Image, ImageAliasesEntry, ImageAliasesEntryPut, ImagePut};
use clap::{Args, Subcommand};
use client::images::ImageUploadArgs;
use client::{Client, Part, Upload};

use crate::ctx::{parse_yaml, read_stdin, stdin_is_terminal, Ctx, Progress};
use crate::format::{date, go_yaml, render_objects, render_typed_list, ListFormat, ListKind};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Manage image aliases
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Delete images
    #[command(alias = "rm")]
    Delete {
        /// [<remote>:]<image> [[<remote>:]<image>...]
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Edit image properties
    Edit {
        /// [<remote>:]<image>
        image: String,
    },
    /// Export and download images
    Export {
        /// [<remote>:]<image>
        image: String,
        /// Target file or directory (default: the current directory)
        target: Option<String>,
        /// Query virtual machine images
        #[arg(long)]
        vm: bool,
    },
    /// Get image properties
    GetProperty {
        /// [<remote>:]<image>
        image: String,
        key: String,
    },
    /// Import images into the image store
    Import(ImportArgs),
    /// Show useful information about images
    Info {
        /// [<remote>:]<image>
        image: String,
        /// Query virtual machine images
        #[arg(long)]
        vm: bool,
    },
    /// List images
    #[command(alias = "ls")]
    List(ListArgs),
    /// Set image properties
    SetProperty {
        /// [<remote>:]<image>
        image: String,
        key: String,
        value: String,
    },
    /// Show image properties
    Show {
        /// [<remote>:]<image>
        image: String,
        /// Query virtual machine images
        #[arg(long)]
        vm: bool,
    },
    /// Unset image properties
    UnsetProperty {
        /// [<remote>:]<image>
        image: String,
        key: String,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// <tarball> [<rootfs tarball>] [<remote>:] [key=value...]
    #[arg(required = true)]
    pub args: Vec<String>,
    /// Make image public
    #[arg(long)]
    pub public: bool,
    /// If the image alias already exists, delete and create a new one
    #[arg(long)]
    pub reuse: bool,
    /// New aliases to add to the image
    #[arg(long = "alias")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// [<remote>:] [<filter>...]
    pub args: Vec<String>,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = DEFAULT_COLUMNS)]
    pub columns: String,
    /// Display images from all projects
    #[arg(long)]
    pub all_projects: bool,
}

const DEFAULT_COLUMNS: &str = "lfpdatsu";

#[derive(Debug, Subcommand)]
pub enum AliasCmd {
    /// Create aliases for existing images
    Create {
        /// [<remote>:]<alias>
        alias: String,
        fingerprint: String,
        /// Image alias description
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete image aliases
    #[command(alias = "rm")]
    Delete {
        /// [<remote>:]<alias>
        alias: String,
    },
    /// List image aliases
    #[command(alias = "ls")]
    List {
        /// [<remote>:] [<filters>...]
        args: Vec<String>,
        /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Columns
        #[arg(short, long, default_value = "aftd")]
        columns: String,
    },
    /// Rename aliases
    #[command(alias = "mv")]
    Rename {
        /// [<remote>:]<alias>
        alias: String,
        new_name: String,
    },
}

const EDIT_HEADER: &str = "### This is a YAML representation of the image properties.
### Any line starting with a '# will be ignored.
###
### Each property is represented by a single line:
### An example would be:
###  description: My custom image";

/// The alias or fingerprint the user named, as a fingerprint (Incus's
/// `dereferenceAlias`: an existing alias wins; an empty name is `default`).
async fn dereference(client: &Client, name: &str) -> String {
    let name = if name.is_empty() { "default" } else { name };
    match client.image_alias(name).await {
        Ok((alias, _)) => alias.put.target,
        Err(_) => name.to_string(),
    }
}

fn shortest_alias(image: &Image) -> String {
    let mut shortest = String::new();
    for a in &image.aliases {
        if shortest.is_empty() || (!a.name.is_empty() && a.name.len() < shortest.len()) {
            shortest = a.name.clone();
        }
    }
    if image.aliases.len() > 1 {
        shortest = format!("{shortest} ({} more)", image.aliases.len() - 1);
    }
    shortest
}

/// `%.2fMiB` of a size in bytes.
fn mib(size: i64) -> String {
    format!("{:.2}MiB", size as f64 / 1024.0 / 1024.0)
}

fn image_column(image: &Image, c: char) -> String {
    match c {
        'a' => image.architecture.clone(),
        'd' => image
            .put
            .properties
            .get("description")
            .cloned()
            .unwrap_or_default(),
        'e' => image.project.clone(),
        'f' => image.fingerprint.chars().take(12).collect(),
        'F' => image.fingerprint.clone(),
        'l' => shortest_alias(image),
        'L' => {
            let mut names: Vec<&str> = image.aliases.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            names.join("\n")
        }
        'p' if image.put.public => "yes".into(),
        'p' => "no".into(),
        's' => mib(image.size),
        't' if image.kind.is_empty() => "CONTAINER".into(),
        't' => image.kind.to_uppercase(),
        _ => date(image.uploaded_at.0),
    }
}

fn image_header(c: char) -> &'static str {
    match c {
        'a' => "ARCHITECTURE",
        'd' => "DESCRIPTION",
        'e' => "PROJECT",
        'f' | 'F' => "FINGERPRINT",
        'l' => "ALIAS",
        'L' => "ALIASES",
        'p' => "PUBLIC",
        's' => "SIZE",
        't' => "TYPE",
        _ => "UPLOAD DATE",
    }
}

/// Whether an image passes the client-side filters of `image list` (pure): `key=value`
/// on a property (key prefixes per dotted part, value as an anchored regex) or a field;
/// a bare word in an alias or the fingerprint.
pub fn image_matches(image: &Image, filters: &[String]) -> bool {
    filters.iter().all(|filter| match filter.split_once('=') {
        Some((key, value)) => {
            let by_property =
                image.put.properties.iter().any(|(k, v)| {
                    crate::list::dot_prefix_match(key, k) && crate::list::value_matches(value, v)
                });
            let by_field = serde_json::to_value(image)
                .ok()
                .and_then(|v| v.get(key).cloned())
                .is_some_and(|v| crate::list::go_value_text(&v) == value);
            by_property || by_field
        }
        None => {
            image.aliases.iter().any(|a| a.name.contains(filter.as_str()))
                || image.fingerprint.contains(filter.as_str())
        }
    })
}

/// `image list` as Incus renders it (pure).
pub fn render_images(
    images: &[Image],
    format: ListFormat,
    columns: &str,
    all_projects: bool,
) -> Result<String> {
    let spec = if all_projects && columns == DEFAULT_COLUMNS {
        "elfpdatsu"
    } else {
        columns
    };
    render_objects(
        format,
        images,
        spec,
        "adefFlLpstu",
        image_column,
        image_header,
        true,
    )
    .map_err(|e| anyhow!(e))
}

/// `image info` as Incus prints it (pure).
pub fn render_image_info(info: &Image) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    out.push_str(&format!("Fingerprint: {}\n", info.fingerprint));
    out.push_str(&format!("Size: {}\n", mib(info.size)));
    out.push_str(&format!("Architecture: {}\n", info.architecture));
    let kind = if info.kind.is_empty() {
        "container"
    } else {
        &info.kind
    };
    out.push_str(&format!("Type: {kind}\n"));
    out.push_str(&format!("Public: {}\n", yes_no(info.put.public)));
    out.push_str("Timestamps:\n");
    if !info.created_at.is_zero() {
        out.push_str(&format!("    Created: {}\n", date(info.created_at.0)));
    }
    out.push_str(&format!("    Uploaded: {}\n", date(info.uploaded_at.0)));
    if info.put.expires_at.is_zero() {
        out.push_str("    Expires: never\n");
    } else {
        out.push_str(&format!("    Expires: {}\n", date(info.put.expires_at.0)));
    }
    if info.last_used_at.is_zero() {
        out.push_str("    Last used: never\n");
    } else {
        out.push_str(&format!("    Last used: {}\n", date(info.last_used_at.0)));
    }
    out.push_str("Properties:\n");
    for (k, v) in &info.put.properties {
        out.push_str(&format!("    {k}: {v}\n"));
    }
    out.push_str("Aliases:\n");
    for a in &info.aliases {
        if a.description.is_empty() {
            out.push_str(&format!("    - {}\n", a.name));
        } else {
            out.push_str(&format!("    - {} ({})\n", a.name, a.description));
        }
    }
    out.push_str(&format!("Cached: {}\n", yes_no(info.cached)));
    out.push_str(&format!(
        "Auto update: {}\n",
        if info.put.auto_update {
            "enabled"
        } else {
            "disabled"
        }
    ));
    if let Some(src) = &info.update_source {
        out.push_str("Source:\n");
        out.push_str(&format!("    Server: {}\n", src.server));
        out.push_str(&format!("    Protocol: {}\n", src.protocol));
        out.push_str(&format!("    Alias: {}\n", src.alias));
    }
    if info.put.profiles.is_empty() {
        out.push_str("Profiles: []\n");
    } else {
        out.push_str("Profiles:\n");
        for p in &info.put.profiles {
            out.push_str(&format!("    - {p}\n"));
        }
    }
    out
}

/// `image alias list` as Incus renders it (pure).
pub fn render_aliases(
    aliases: &[ImageAliasesEntry],
    filters: &[String],
    format: ListFormat,
    columns: &str,
) -> Result<String> {
    let shown: Vec<&ImageAliasesEntry> = aliases
        .iter()
        .filter(|a| {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| a.name.contains(f.as_str()) || a.put.target.contains(f.as_str()))
        })
        .collect();
    let cell = |a: &&ImageAliasesEntry, c: char| match c {
        'a' => a.name.clone(),
        'f' => a.put.target.chars().take(12).collect(),
        't' if a.kind.is_empty() => "CONTAINER".into(),
        't' => a.kind.to_uppercase(),
        _ => a.put.description.clone(),
    };
    let header = |c: char| match c {
        'a' => "ALIAS",
        'f' => "FINGERPRINT",
        't' => "TYPE",
        _ => "DESCRIPTION",
    };
    if matches!(format.kind, ListKind::Json | ListKind::Yaml) {
        // Incus prints every alias there, whatever the filters.
        crate::format::parse_columns(columns, "aftd").map_err(|e| anyhow!(e))?;
        return render_typed_list(format, &[], &[], aliases).map_err(|e| anyhow!(e));
    }
    render_objects(format, &shown, columns, "aftd", cell, header, true).map_err(|e| anyhow!(e))
}

/// Splits `image import`'s arguments as Incus does: an argument ending in `:` is the
/// remote, `key=value` (unless a file of that name exists) a property, the rest the
/// image file and then the root file system.
pub fn split_import_args(
    args: &[String],
    exists: impl Fn(&str) -> bool,
) -> (Option<String>, Option<String>, Option<String>, Vec<String>) {
    let (mut image, mut rootfs, mut remote, mut props) = (None, None, None, Vec::new());
    for arg in args {
        if !arg.contains('=') || exists(arg) {
            if arg.ends_with(':') {
                remote = Some(arg.clone());
            } else if image.is_none() {
                image = Some(arg.clone());
            } else {
                rootfs = Some(arg.clone());
            }
        } else {
            props.push(arg.clone());
        }
    }
    (image, rootfs, remote, props)
}

fn base_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

async fn open(path: &str) -> Result<tokio::fs::File> {
    tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {path}"))
}

async fn import(ctx: &Ctx, args: ImportArgs) -> Result<()> {
    let (image, rootfs, remote, props) = split_import_args(&args.args, |p| Path::new(p).exists());
    let image = image.ok_or_else(|| anyhow!("Missing the image file"))?;
    if image.starts_with("http://") {
        bail!("Only https:// is supported for remote image import");
    }
    if image.starts_with("https://") {
        bail!("Importing images from a URL isn't supported by stapes yet");
    }
    if Path::new(&image).is_dir() {
        bail!("Directory import isn't supported by stapes yet");
    }
    let (remote, _) = ctx.remote_arg(remote.as_deref())?;
    let client = ctx.client(&remote)?;
    let mut properties = Vec::new();
    for entry in &props {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| anyhow!("Bad property: {entry}"))?;
        properties.push((k.trim().to_string(), v.trim().to_string()));
    }
    let meta = open(&image).await?;
    let body = match &rootfs {
        None => Upload::new(meta, "application/octet-stream"),
        Some(r) => Upload::multipart(vec![
            Part {
                name: "metadata".into(),
                filename: base_name(&image),
                reader: Box::pin(meta),
            },
            Part {
                name: "rootfs".into(),
                filename: base_name(r),
                reader: Box::pin(open(r).await?),
            },
        ]),
    };
    let upload = ImageUploadArgs {
        filename: base_name(&image),
        public: args.public,
        properties,
        profiles: Vec::new(),
    };
    let show = !ctx.globals.quiet && crate::ctx::stdout_is_terminal();
    let sent = body.sent();
    let ticker = show.then(|| {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut p = Progress::default();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let n = sent.load(std::sync::atomic::Ordering::Relaxed);
                p.update(&format!(
                    "Transferring image: {}",
                    crate::format::size_si(i64::try_from(n).unwrap_or(i64::MAX), 2)
                ));
            }
        })
    });
    let result = client.import_image(body, &upload).await;
    if let Some(t) = ticker {
        t.abort();
        Progress::clear_line();
    }
    let done = ctx.wait(&client, &result?, "Transferring image").await?;
    let fingerprint = done
        .metadata
        .as_ref()
        .and_then(|m| m.get("fingerprint"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("The server did not say the image's fingerprint"))?
        .to_string();
    if !ctx.globals.quiet {
        println!("Image imported with fingerprint: {fingerprint}");
    }
    if args.reuse {
        delete_images_by_aliases(ctx, &client, &args.aliases).await?;
    }
    ensure_aliases(&client, &args.aliases, &fingerprint).await
}

/// Incus's `ensureImageAliases`: aliases of the same names are deleted, then created
/// for `fingerprint`.
async fn ensure_aliases(client: &Client, names: &[String], fingerprint: &str) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let existing = client.image_aliases().await?;
    for alias in existing.iter().filter(|a| names.contains(&a.name)) {
        client
            .delete_image_alias(&alias.name)
            .await
            .map_err(|e| anyhow!("Failed to remove alias {}: {e}", alias.name))?;
    }
    for name in names {
        let alias = ImageAliasesEntry {
            put: ImageAliasesEntryPut {
                description: String::new(),
                target: fingerprint.to_string(),
            },
            name: name.clone(),
            kind: String::new(),
        };
        client
            .create_image_alias(&alias)
            .await
            .map_err(|e| anyhow!("Failed to create alias {name}: {e}"))?;
    }
    Ok(())
}

/// Incus's `deleteImagesByAliases`: an image whose aliases are all among `names` is
/// deleted (it is being replaced).
async fn delete_images_by_aliases(ctx: &Ctx, client: &Client, names: &[String]) -> Result<()> {
    let existing = client.image_aliases().await?;
    let mut seen = Vec::new();
    for alias in existing.iter().filter(|a| names.contains(&a.name)) {
        let Ok((image, _)) = client.image(&alias.put.target).await else {
            continue;
        };
        if seen.contains(&image.fingerprint) {
            continue;
        }
        seen.push(image.fingerprint.clone());
        if image.aliases.iter().all(|a| names.contains(&a.name)) {
            let op = client.delete_image(&alias.put.target).await?;
            ctx.wait(client, &op, "").await?;
        }
    }
    Ok(())
}

async fn export(ctx: &Ctx, image: &str, target: Option<&str>) -> Result<()> {
    let (remote, name) = ctx.parse_remote(image)?;
    let client = ctx.client(&remote)?;
    let fingerprint = dereference(&client, &name).await;
    let target_dir = target.unwrap_or(".");
    let meta_path: PathBuf = match target {
        Some(t) if Path::new(t).is_dir() => Path::new(t).join(&fingerprint),
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(&fingerprint),
    };
    let rootfs_path = PathBuf::from(format!("{}.root", meta_path.display()));
    let cleanup = || {
        let _ = std::fs::remove_file(&meta_path);
        let _ = std::fs::remove_file(&rootfs_path);
    };
    let mut meta = tokio::fs::File::create(&meta_path)
        .await
        .with_context(|| format!("open {}", meta_path.display()))?;
    let mut rootfs = tokio::fs::File::create(&rootfs_path)
        .await
        .with_context(|| format!("open {}", rootfs_path.display()))?;
    let file = match client.export_image(&fingerprint, &mut meta, &mut rootfs).await {
        Ok(f) => f,
        Err(e) => {
            cleanup();
            return Err(e.into());
        }
    };
    drop(meta);
    drop(rootfs);
    let renamed = (|| -> std::io::Result<()> {
        if file.rootfs_size == 0 {
            std::fs::remove_file(&rootfs_path)?;
        }
        if Path::new(target_dir).is_dir() {
            if !file.meta_name.is_empty() {
                std::fs::rename(&meta_path, Path::new(target_dir).join(&file.meta_name))?;
            }
            if let Some(r) = file
                .rootfs_name
                .as_ref()
                .filter(|r| file.rootfs_size > 0 && !r.is_empty())
            {
                std::fs::rename(&rootfs_path, Path::new(target_dir).join(r))?;
            }
        } else if file.rootfs_size == 0 && target.is_some() && !file.meta_name.is_empty() {
            if let Some((_, ext)) = file.meta_name.split_once('.') {
                std::fs::rename(&meta_path, format!("{}.{ext}", meta_path.display()))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = renamed {
        cleanup();
        return Err(e.into());
    }
    if !ctx.globals.quiet {
        println!("Image exported successfully!");
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Alias(cmd) => alias(ctx, cmd).await,
        ImageCmd::Delete { images } => {
            for image in images {
                let (remote, name) = ctx.parse_remote(&image)?;
                if name.is_empty() {
                    bail!("Image identifier missing");
                }
                let client = ctx.client(&remote)?;
                let fp = dereference(&client, &name).await;
                let op = client.delete_image(&fp).await?;
                ctx.wait(&client, &op, "").await?;
            }
            Ok(())
        }
        ImageCmd::Edit { image } => {
            let (remote, name) = ctx.parse_remote(&image)?;
            if name.is_empty() {
                bail!("Image identifier missing: {image}");
            }
            let client = ctx.client(&remote)?;
            let fp = dereference(&client, &name).await;
            if !stdin_is_terminal() {
                let put: ImagePut = parse_yaml(&read_stdin()?)?;
                client.update_image(&fp, &put, None).await?;
                return Ok(());
            }
            let (img, etag) = client.image(&fp).await?;
            let text = format!(
                "{EDIT_HEADER}\n\n{}",
                go_yaml(&img.writable()).map_err(|e| anyhow!(e))?
            );
            let path = format!("/1.0/images/{}", client::typed::seg(&fp));
            crate::ctx::edit_in_editor(&client, &path, etag.as_deref(), &text, |t| {
                Ok(serde_json::to_value(parse_yaml::<ImagePut>(t)?)?)
            })
            .await
        }
        ImageCmd::Export { image, target, .. } => export(ctx, &image, target.as_deref()).await,
        ImageCmd::GetProperty { image, key } => {
            let (remote, name) = ctx.parse_remote(&image)?;
            let client = ctx.client(&remote)?;
            let fp = dereference(&client, &name).await;
            let (img, _) = client.image(&fp).await?;
            match img.put.properties.get(&key) {
                Some(v) => println!("{v}"),
                None => bail!("Property not found"),
            }
            Ok(())
        }
        ImageCmd::Import(args) => import(ctx, args).await,
        ImageCmd::Info { image, .. } => {
            let (remote, name) = ctx.parse_remote(&image)?;
            let client = ctx.client(&remote)?;
            let fp = dereference(&client, &name).await;
            let (img, _) = client.image(&fp).await?;
            print!("{}", render_image_info(&img));
            Ok(())
        }
        ImageCmd::List(args) => {
            let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
            let first = args.args.first().map(String::as_str).unwrap_or("");
            let (remote, name) = ctx.parse_remote(first)?;
            let mut filters = Vec::new();
            if !name.is_empty() {
                filters.push(name);
            }
            filters.extend(args.args.iter().skip(1).cloned());
            let client = ctx.client(&remote)?;
            let images: Vec<Image> = if args.all_projects {
                client
                    .get_typed("/1.0/images?recursion=1&all-projects=true")
                    .await?
                    .0
            } else {
                client.images(&[]).await?
            };
            let shown: Vec<Image> = images
                .into_iter()
                .filter(|i| image_matches(i, &filters))
                .collect();
            print!(
                "{}",
                render_images(&shown, format, &args.columns, args.all_projects)?
            );
            Ok(())
        }
        ImageCmd::SetProperty { image, key, value } => set_property(ctx, &image, &key, Some(value)).await,
        ImageCmd::Show { image, .. } => {
            let (remote, name) = ctx.parse_remote(&image)?;
            let client = ctx.client(&remote)?;
            let fp = dereference(&client, &name).await;
            let (img, _) = client.image(&fp).await?;
            print!("{}", go_yaml(&img.writable()).map_err(|e| anyhow!(e))?);
            Ok(())
        }
        ImageCmd::UnsetProperty { image, key } => set_property(ctx, &image, &key, None).await,
    }
}

async fn set_property(ctx: &Ctx, image: &str, key: &str, value: Option<String>) -> Result<()> {
    let (remote, name) = ctx.parse_remote(image)?;
    if name.is_empty() {
        bail!("Image identifier missing: {image}");
    }
    let client = ctx.client(&remote)?;
    let fp = dereference(&client, &name).await;
    let (img, etag) = client.image(&fp).await?;
    let mut put = img.writable();
    match value {
        Some(v) => {
            put.properties.insert(key.to_string(), v);
        }
        None => {
            put.properties.remove(key);
        }
    }
    client.update_image(&fp, &put, etag.as_deref()).await?;
    Ok(())
}

async fn alias(ctx: &Ctx, cmd: AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::Create {
            alias,
            fingerprint,
            description,
        } => {
            let (remote, name) = ctx.parse_remote(&alias)?;
            if name.is_empty() {
                bail!("Alias name missing");
            }
            let entry = ImageAliasesEntry {
                put: ImageAliasesEntryPut {
                    description,
                    target: fingerprint,
                },
                name,
                kind: String::new(),
            };
            ctx.client(&remote)?.create_image_alias(&entry).await?;
            Ok(())
        }
        AliasCmd::Delete { alias } => {
            let (remote, name) = ctx.parse_remote(&alias)?;
            if name.is_empty() {
                bail!("Alias name missing");
            }
            ctx.client(&remote)?.delete_image_alias(&name).await?;
            Ok(())
        }
        AliasCmd::List {
            args,
            format,
            columns,
        } => {
            let format = ListFormat::parse(&format).map_err(|e| anyhow!(e))?;
            let first = args.first().map(String::as_str).unwrap_or("");
            let (remote, name) = ctx.parse_remote(first)?;
            let mut filters = Vec::new();
            if !name.is_empty() {
                filters.push(name);
            }
            filters.extend(args.iter().skip(1).cloned());
            let aliases = ctx.client(&remote)?.image_aliases().await?;
            print!("{}", render_aliases(&aliases, &filters, format, &columns)?);
            Ok(())
        }
        AliasCmd::Rename { alias, new_name } => {
            let (remote, name) = ctx.parse_remote(&alias)?;
            if name.is_empty() {
                bail!("Alias name missing");
            }
            ctx.client(&remote)?.rename_image_alias(&name, &new_name).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_import_arguments_as_incus_splits_them() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let none = |_: &str| false;
        assert_eq!(
            split_import_args(&s(&["bb.tar.gz", "m1:", "os=busybox"]), none),
            (
                Some("bb.tar.gz".into()),
                None,
                Some("m1:".into()),
                s(&["os=busybox"])
            )
        );
        assert_eq!(
            split_import_args(&s(&["meta.tar.gz", "rootfs.squashfs"]), none),
            (
                Some("meta.tar.gz".into()),
                Some("rootfs.squashfs".into()),
                None,
                vec![]
            )
        );
        // A file whose name has `=` in it is a file when it exists.
        assert_eq!(
            split_import_args(&s(&["a=b.tar"]), |p| p == "a=b.tar"),
            (Some("a=b.tar".into()), None, None, vec![])
        );
    }
}
