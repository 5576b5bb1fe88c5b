//! Images: the record of each image (`/1.0/images`), its aliases, and which members hold
//! its files.
//!
//! The record is the API object less its aliases (rendered from [`State::image_aliases`]
//! when shown), plus `locations`: the members whose image directory holds the files,
//! by [`MemberId`] (`None` is this server while standalone; `adopt_standalone` places
//! it on the first member). The files themselves are each member's business: a member
//! adds itself once its copy is whole and verified, and removes from its directory any
//! image the state no longer has (so a member offline at a delete cleans up when it
//! returns). Deleting an image deletes the aliases that point at it; removing a member
//! removes it from every image's locations.

use std::collections::{BTreeMap, BTreeSet};

use api::types::{Image, ImageAlias, ImageAliasesEntry, ImageAliasesEntryPut, ImagePut};
use serde::{Deserialize, Serialize};

use super::{MemberId, State, StateError};

/// An image as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The API object; its `aliases` are kept empty (see [`State::render_image`]).
    pub image: Image,
    /// Members holding the files.
    #[serde(default)]
    pub locations: BTreeSet<Option<MemberId>>,
}

/// An alias as replicated: it names an image by its whole fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub description: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ImageCommand {
    /// Records a new image, held by `location`, with `aliases` (checked together).
    CreateImage {
        image: Box<Image>,
        location: Option<MemberId>,
        #[serde(default)]
        aliases: Vec<ImageAlias>,
    },
    /// Replaces the writable fields.
    UpdateImage {
        fingerprint: String,
        put: ImagePut,
    },
    /// Removes the record and the aliases pointing at it.
    DeleteImage {
        fingerprint: String,
    },
    /// A member now holds a whole, verified copy.
    AddImageLocation {
        fingerprint: String,
        location: Option<MemberId>,
    },
    /// A member no longer holds the files (absent is fine).
    RemoveImageLocation {
        fingerprint: String,
        location: Option<MemberId>,
    },
    CreateAlias {
        name: String,
        alias: ImageAliasesEntryPut,
    },
    /// Replaces description and target.
    UpdateAlias {
        name: String,
        alias: ImageAliasesEntryPut,
    },
    RenameAlias {
        name: String,
        new_name: String,
    },
    DeleteAlias {
        name: String,
    },
}

impl ImageCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ImageCommand::CreateImage { .. } => "create_image",
            ImageCommand::UpdateImage { .. } => "update_image",
            ImageCommand::DeleteImage { .. } => "delete_image",
            ImageCommand::AddImageLocation { .. } => "add_image_location",
            ImageCommand::RemoveImageLocation { .. } => "remove_image_location",
            ImageCommand::CreateAlias { .. } => "create_image_alias",
            ImageCommand::UpdateAlias { .. } => "update_image_alias",
            ImageCommand::RenameAlias { .. } => "rename_image_alias",
            ImageCommand::DeleteAlias { .. } => "delete_image_alias",
        }
    }
}

pub(super) fn apply(state: &mut State, cmd: &ImageCommand) -> Result<(), StateError> {
    match cmd {
        ImageCommand::CreateImage {
            image,
            location,
            aliases,
        } => {
            state.check_member(*location)?;
            let fp = &image.fingerprint;
            if state.images.contains_key(fp) {
                return Err(StateError::ImageExists);
            }
            let mut names = BTreeSet::new();
            for a in aliases {
                if state.image_aliases.contains_key(&a.name) || !names.insert(&a.name) {
                    return Err(StateError::Invalid(format!("Alias already exists: {}", a.name)));
                }
            }
            let mut image = (**image).clone();
            image.aliases.clear();
            for a in aliases {
                state.image_aliases.insert(
                    a.name.clone(),
                    AliasRecord {
                        description: a.description.clone(),
                        target: fp.clone(),
                    },
                );
            }
            state.images.insert(
                fp.clone(),
                ImageRecord {
                    image,
                    locations: [*location].into(),
                },
            );
        }
        ImageCommand::UpdateImage { fingerprint, put } => {
            state
                .images
                .get_mut(fingerprint)
                .ok_or(StateError::ImageNotFound)?
                .image
                .put = put.clone();
        }
        ImageCommand::DeleteImage { fingerprint } => {
            state
                .images
                .remove(fingerprint)
                .ok_or(StateError::ImageNotFound)?;
            state.image_aliases.retain(|_, a| &a.target != fingerprint);
        }
        ImageCommand::AddImageLocation {
            fingerprint,
            location,
        } => {
            state.check_member(*location)?;
            state
                .images
                .get_mut(fingerprint)
                .ok_or(StateError::ImageNotFound)?
                .locations
                .insert(*location);
        }
        ImageCommand::RemoveImageLocation {
            fingerprint,
            location,
        } => {
            state
                .images
                .get_mut(fingerprint)
                .ok_or(StateError::ImageNotFound)?
                .locations
                .remove(location);
        }
        ImageCommand::CreateAlias { name, alias } => {
            if state.image_aliases.contains_key(name) {
                return Err(StateError::AliasExists(name.clone()));
            }
            check_target(state, &alias.target)?;
            state.image_aliases.insert(name.clone(), alias_record(alias));
        }
        ImageCommand::UpdateAlias { name, alias } => {
            if !state.image_aliases.contains_key(name) {
                return Err(StateError::AliasNotFound);
            }
            check_target(state, &alias.target)?;
            state.image_aliases.insert(name.clone(), alias_record(alias));
        }
        ImageCommand::RenameAlias { name, new_name } => {
            if state.image_aliases.contains_key(new_name) {
                return Err(StateError::AliasExists(new_name.clone()));
            }
            let a = state
                .image_aliases
                .remove(name)
                .ok_or(StateError::AliasNotFound)?;
            state.image_aliases.insert(new_name.clone(), a);
        }
        ImageCommand::DeleteAlias { name } => {
            state
                .image_aliases
                .remove(name)
                .ok_or(StateError::AliasNotFound)?;
        }
    }
    Ok(())
}

fn check_target(state: &State, target: &str) -> Result<(), StateError> {
    if state.images.contains_key(target) {
        Ok(())
    } else {
        Err(StateError::ImageNotFound)
    }
}

fn alias_record(alias: &ImageAliasesEntryPut) -> AliasRecord {
    AliasRecord {
        description: alias.description.clone(),
        target: alias.target.clone(),
    }
}

/// Why a fingerprint (or a prefix of one) names no single image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLookup {
    NotFound,
    Ambiguous,
}

impl State {
    /// The image whose fingerprint is `prefix` or starts with it, as Incus resolves
    /// `/1.0/images/{fingerprint}`.
    pub fn find_image(&self, prefix: &str) -> Result<&ImageRecord, ImageLookup> {
        if prefix.is_empty() {
            return Err(ImageLookup::NotFound);
        }
        if let Some(r) = self.images.get(prefix) {
            return Ok(r);
        }
        let mut found = self
            .images
            .range(prefix.to_string()..)
            .take_while(|(fp, _)| fp.starts_with(prefix));
        match (found.next(), found.next()) {
            (Some((_, r)), None) => Ok(r),
            (None, _) => Err(ImageLookup::NotFound),
            (Some(_), Some(_)) => Err(ImageLookup::Ambiguous),
        }
    }

    /// The aliases pointing at `fingerprint`, by name.
    pub fn aliases_of(&self, fingerprint: &str) -> Vec<ImageAlias> {
        self.image_aliases
            .iter()
            .filter(|(_, a)| a.target == fingerprint)
            .map(|(name, a)| ImageAlias {
                name: name.clone(),
                description: a.description.clone(),
            })
            .collect()
    }

    /// The API object of an image, with its aliases.
    pub fn render_image(&self, record: &ImageRecord) -> Image {
        let mut image = record.image.clone();
        image.aliases = self.aliases_of(&image.fingerprint);
        image
    }

    /// The API object of an alias.
    pub fn render_alias(&self, name: &str) -> Option<ImageAliasesEntry> {
        let a = self.image_aliases.get(name)?;
        Some(ImageAliasesEntry {
            put: ImageAliasesEntryPut {
                description: a.description.clone(),
                target: a.target.clone(),
            },
            name: name.to_string(),
            kind: self
                .images
                .get(&a.target)
                .map(|r| r.image.kind.clone())
                .unwrap_or_default(),
        })
    }

    /// The images whose files `member` holds.
    pub fn images_at(&self, member: Option<MemberId>) -> impl Iterator<Item = &ImageRecord> {
        self.images
            .values()
            .filter(move |r| r.locations.contains(&member))
    }
}

/// What a removed member leaves: it holds no image any more.
pub(super) fn forget_member(images: &mut BTreeMap<String, ImageRecord>, id: MemberId) {
    for r in images.values_mut() {
        r.locations.remove(&Some(id));
    }
}

/// What a standalone server held becomes its first member's.
pub(super) fn adopt_standalone(images: &mut BTreeMap<String, ImageRecord>, id: MemberId) {
    for r in images.values_mut() {
        if r.locations.remove(&None) {
            r.locations.insert(Some(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    pub(crate) fn image(fp: &str) -> Image {
        Image {
            fingerprint: fp.into(),
            kind: "container".into(),
            architecture: "x86_64".into(),
            ..Default::default()
        }
    }

    fn ap(s: &mut State, c: ImageCommand) -> Result<(), StateError> {
        s.apply(&Command::from(c))
    }

    fn create(s: &mut State, fp: &str, aliases: &[&str]) -> Result<(), StateError> {
        ap(
            s,
            ImageCommand::CreateImage {
                image: Box::new(image(fp)),
                location: None,
                aliases: aliases
                    .iter()
                    .map(|n| ImageAlias {
                        name: n.to_string(),
                        description: String::new(),
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn t10_an_image_and_its_aliases_come_and_go_together() {
        let mut s = State::default();
        create(&mut s, "abc1", &["a"]).unwrap();
        assert_eq!(create(&mut s, "abc1", &[]), Err(StateError::ImageExists));
        let before = s.clone();
        assert!(create(&mut s, "abc2", &["a"]).is_err(), "alias taken");
        assert!(create(&mut s, "abc2", &["b", "b"]).is_err(), "alias twice");
        assert_eq!(s, before);
        create(&mut s, "abd", &["b"]).unwrap();
        assert_eq!(s.render_image(&s.images["abc1"]).aliases.len(), 1);
        assert_eq!(s.find_image("abc").unwrap().image.fingerprint, "abc1");
        assert_eq!(s.find_image("ab").unwrap_err(), ImageLookup::Ambiguous);
        assert_eq!(s.find_image("x").unwrap_err(), ImageLookup::NotFound);
        assert_eq!(s.find_image("").unwrap_err(), ImageLookup::NotFound);
        ap(
            &mut s,
            ImageCommand::DeleteImage {
                fingerprint: "abc1".into(),
            },
        )
        .unwrap();
        assert!(!s.image_aliases.contains_key("a"));
        assert!(s.image_aliases.contains_key("b"));
    }

    #[test]
    fn t10_aliases_name_existing_images_once() {
        let mut s = State::default();
        create(&mut s, "f1", &[]).unwrap();
        let put = |target: &str| ImageAliasesEntryPut {
            description: "d".into(),
            target: target.into(),
        };
        let c = |name: &str, target: &str| ImageCommand::CreateAlias {
            name: name.into(),
            alias: put(target),
        };
        assert_eq!(ap(&mut s, c("a", "nope")), Err(StateError::ImageNotFound));
        ap(&mut s, c("a", "f1")).unwrap();
        ap(&mut s, c("b", "f1")).unwrap();
        assert_eq!(ap(&mut s, c("a", "f1")), Err(StateError::AliasExists("a".into())));
        let rename = |from: &str, to: &str| ImageCommand::RenameAlias {
            name: from.into(),
            new_name: to.into(),
        };
        assert_eq!(
            ap(&mut s, rename("a", "b")),
            Err(StateError::AliasExists("b".into()))
        );
        assert_eq!(ap(&mut s, rename("z", "y")), Err(StateError::AliasNotFound));
        ap(&mut s, rename("a", "c")).unwrap();
        assert_eq!(s.render_alias("c").unwrap().put.target, "f1");
        assert_eq!(s.render_alias("c").unwrap().kind, "container");
        ap(&mut s, ImageCommand::DeleteAlias { name: "c".into() }).unwrap();
        assert_eq!(
            ap(&mut s, ImageCommand::DeleteAlias { name: "c".into() }),
            Err(StateError::AliasNotFound)
        );
    }

    #[test]
    fn t10_locations_name_current_members() {
        let mut s = State::default();
        create(&mut s, "f1", &[]).unwrap();
        let add = |at: Option<MemberId>| ImageCommand::AddImageLocation {
            fingerprint: "f1".into(),
            location: at,
        };
        assert_eq!(ap(&mut s, add(Some(4))), Err(StateError::MemberNotFound));
        s.adopt_standalone(4);
        assert_eq!(s.images["f1"].locations, [Some(4)].into());
        assert_eq!(s.images_at(Some(4)).count(), 1);
    }
}
