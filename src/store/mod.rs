//! The store of recorded marks: SQLite, the single source of truth.
//!
//! Everything needed to rebuild marklens lives here: the recordation fields, the
//! source image, and every embedding with the fingerprint of the model that made it.
//! The vector index is a cache of this store and can always be rebuilt from it.
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, and every
//! change is one transaction, so a mark is on disk before its enrolment is
//! acknowledged, and a crash loses nothing that was acknowledged.
//!
//! Every embedding row has an integer `vid`, the label it carries in the vector
//! index. `vid`s are never reused (AUTOINCREMENT), so a stale index entry can never
//! point at the wrong mark.

mod record;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

pub use record::{MarkFields, MarkRecord, MarkStatus};

/// Version of the schema this build writes. Bumped with every migration.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA_V1: &str = "
CREATE TABLE marks (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT NOT NULL UNIQUE,
    recordation_number   TEXT,
    registration_number  TEXT,
    name                 TEXT,
    holder               TEXT,
    nice_classes         TEXT NOT NULL DEFAULT '',
    status               TEXT NOT NULL DEFAULT 'active',
    valid_until          TEXT,
    image_sha256         TEXT NOT NULL,
    image_format         TEXT NOT NULL,
    image                BLOB NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
CREATE TABLE embeddings (
    vid      INTEGER PRIMARY KEY AUTOINCREMENT,
    mark_seq INTEGER NOT NULL REFERENCES marks(seq) ON DELETE CASCADE,
    view     INTEGER NOT NULL,
    model    TEXT NOT NULL,
    vector   BLOB NOT NULL,
    UNIQUE (mark_seq, view)
);
CREATE INDEX embeddings_by_mark ON embeddings(mark_seq);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const SCHEMA_V2: &str = "ALTER TABLE embeddings ADD COLUMN keypoints BLOB NOT NULL DEFAULT x'';";

const SCHEMA_V3: &str = "ALTER TABLE embeddings ADD COLUMN frame BLOB NOT NULL DEFAULT x'';";

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "database schema version {found} is newer than this build understands ({SCHEMA_VERSION}); upgrade marklens"
    )]
    TooNew { found: i64 },
    #[error("stored vector of mark {mark_id} has {found} bytes, expected {expected}")]
    CorruptVector {
        mark_id: String,
        found: usize,
        expected: usize,
    },
}

/// A mark to record: its fields, its source image and its embedding views.
#[derive(Debug, Clone)]
pub struct NewMark {
    pub id: String,
    pub fields: MarkFields,
    pub image: Vec<u8>,
    pub image_sha256: String,
    pub image_format: String,
    /// One unit vector per view of the image (at least one).
    pub views: Vec<Vec<f32>>,
    /// The encoded keypoints of each view, in the same order (empty when there
    /// are none, as for vectors computed elsewhere).
    pub keypoints: Vec<Vec<u8>>,
    /// The encoded frame of each view (where its pixels lie in the image), in
    /// the same order; empty like `keypoints`.
    pub frames: Vec<Vec<u8>>,
}

/// What happened to one mark in [`Store::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// A new id.
    Created,
    /// The id existed with another image (or another model): vectors replaced.
    Replaced,
    /// Same image and model, other fields: fields updated, vectors kept.
    Updated,
    /// Same image, model and fields: nothing written.
    Unchanged,
}

/// The effect of a write on the vector index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexDelta {
    /// Vectors that no longer exist.
    pub removed: Vec<u64>,
    /// New vectors with their labels.
    pub added: Vec<(u64, Vec<f32>)>,
}

/// What the search side needs to know about each indexed vector, kept in memory so
/// that filters never touch the database.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorOwner {
    pub vid: u64,
    pub mark_id: String,
    pub status: MarkStatus,
    pub holder: Option<String>,
    pub nice_classes: Vec<u8>,
}

/// Filters for listing marks.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only marks whose id sorts after this one (pagination cursor).
    pub after: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
    pub status: Option<MarkStatus>,
    /// Case-insensitive substring of the holder.
    pub holder: Option<String>,
    /// Marks in any of these classes.
    pub nice_classes: Vec<u8>,
}

/// Counts for `info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounts {
    pub marks: usize,
    pub vectors: usize,
    pub image_bytes: u64,
}

/// The SQLite database of recorded marks.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Reads the first `limit` bytes of the database file once, start to end, so
/// that the operating system keeps them cached; returns the bytes read.
///
/// Why: every search verifies its candidates against their stored keypoints,
/// one small read per candidate. From a cold disk (after a boot, or a restart
/// on a busy host) each of those reads waits on the device, and the first
/// searches take seconds instead of milliseconds: 20 photos screened against
/// 116,930 marks took 44 s cold and 4 s warm, while reading the whole 2.3 GB
/// file in order took 3.6 s. Reading in order is what disks do fastest.
pub fn warm_cache(path: &Path, limit: u64) -> std::io::Result<u64> {
    use std::io::Read;
    std::io::copy(
        &mut std::fs::File::open(path)?.take(limit),
        &mut std::io::sink(),
    )
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version });
        }
        if version < 1 {
            let tx = self.conn.transaction()?;
            tx.execute_batch(SCHEMA_V1)?;
            tx.pragma_update(None, "user_version", 1)?;
            tx.commit()?;
        }
        if version < 2 {
            // Each view's local features beside its vector. Views recorded before
            // have none until re-embedded (their fingerprint is stale anyway).
            let tx = self.conn.transaction()?;
            tx.execute_batch(SCHEMA_V2)?;
            tx.pragma_update(None, "user_version", 2)?;
            tx.commit()?;
        }
        if version < 3 {
            // Each view's frame: where its pixels lie in the recorded image. Views
            // recorded before have none; their matches show the photo's side only.
            let tx = self.conn.transaction()?;
            tx.execute_batch(SCHEMA_V3)?;
            tx.pragma_update(None, "user_version", 3)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The model fingerprints of the stored vectors (normally zero or one).
    pub fn models(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT model FROM embeddings ORDER BY model")?;
        let models = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(models)
    }

    /// The image hash and model of a recorded id, to skip work that is already done.
    pub fn fingerprint_of(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT m.image_sha256, coalesce(min(e.model), '')
                   FROM marks m LEFT JOIN embeddings e ON e.mark_seq = m.seq
                  WHERE m.id = ?1 GROUP BY m.seq",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Records `marks` in one transaction (all or nothing) and returns, per mark, what
    /// happened, plus the combined change to the vector index.
    pub fn put(
        &mut self,
        marks: &[NewMark],
        model: &str,
    ) -> Result<(Vec<PutOutcome>, IndexDelta), StoreError> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(marks.len());
        let mut delta = IndexDelta::default();
        for mark in marks {
            outcomes.push(put_one(&tx, mark, model, &mut delta)?);
        }
        tx.commit()?;
        Ok((outcomes, delta))
    }

    /// Removes a mark; returns the labels of its vectors, or `None` if it was unknown.
    pub fn remove(&mut self, id: &str) -> Result<Option<Vec<u64>>, StoreError> {
        let tx = self.conn.transaction()?;
        let Some(seq) = tx
            .query_row("SELECT seq FROM marks WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
        else {
            return Ok(None);
        };
        let vids = vids_of(&tx, seq)?;
        tx.execute("DELETE FROM embeddings WHERE mark_seq = ?1", [seq])?;
        tx.execute("DELETE FROM marks WHERE seq = ?1", [seq])?;
        tx.commit()?;
        Ok(Some(vids))
    }

    pub fn get(&self, id: &str) -> Result<Option<MarkRecord>, StoreError> {
        let sql = format!("{SELECT_RECORD} WHERE m.id = ?1 GROUP BY m.seq");
        Ok(self.conn.query_row(&sql, [id], read_record).optional()?)
    }

    /// The source image of a mark.
    pub fn image(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT image FROM marks WHERE id = ?1", [id], |r| r.get(0))
            .optional()?)
    }

    /// Marks in id order, filtered and paginated.
    pub fn list(&self, query: &ListQuery) -> Result<Vec<MarkRecord>, StoreError> {
        let sql = format!(
            "{SELECT_RECORD} WHERE (?1 IS NULL OR m.id > ?1) AND (?2 IS NULL OR m.status = ?2)
               AND (?3 IS NULL OR instr(lower(m.holder), lower(?3)) > 0)
             GROUP BY m.seq ORDER BY m.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![
                query.after,
                query.status.map(MarkStatus::as_str),
                query.holder
            ],
            read_record,
        )?;
        let mut out = Vec::new();
        for row in rows {
            let record = row?;
            let in_class = query.nice_classes.is_empty()
                || record
                    .fields
                    .nice_classes
                    .iter()
                    .any(|c| query.nice_classes.contains(c));
            if in_class {
                out.push(record);
                if query.limit > 0 && out.len() == query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        Ok(self.conn.query_row(
            "SELECT (SELECT count(*) FROM marks), (SELECT count(*) FROM embeddings),
                    (SELECT coalesce(sum(length(image)), 0) FROM marks)",
            [],
            |r| {
                Ok(StoreCounts {
                    marks: r.get::<_, i64>(0)? as usize,
                    vectors: r.get::<_, i64>(1)? as usize,
                    image_bytes: r.get::<_, i64>(2)? as u64,
                })
            },
        )?)
    }

    /// Every vector's owner, for the in-memory filter table.
    pub fn owners(&self) -> Result<Vec<VectorOwner>, StoreError> {
        self.query_owners(None)
    }

    /// The owners of one mark's vectors (after its fields changed).
    pub fn owners_of(&self, id: &str) -> Result<Vec<VectorOwner>, StoreError> {
        self.query_owners(Some(id))
    }

    fn query_owners(&self, id: Option<&str>) -> Result<Vec<VectorOwner>, StoreError> {
        // Two statements rather than `?1 IS NULL OR m.id = ?1`, which defeats the
        // unique index on `id` and would scan every mark for a single-mark lookup.
        const ALL: &str = "SELECT e.vid, m.id, m.status, m.holder, m.nice_classes
               FROM embeddings e JOIN marks m ON m.seq = e.mark_seq ORDER BY e.vid";
        const ONE: &str = "SELECT e.vid, m.id, m.status, m.holder, m.nice_classes
               FROM marks m JOIN embeddings e ON e.mark_seq = m.seq WHERE m.id = ?1";
        let mut stmt = self
            .conn
            .prepare_cached(if id.is_some() { ONE } else { ALL })?;
        let params: &[&dyn rusqlite::ToSql] = match &id {
            Some(id) => &[id],
            None => &[],
        };
        let rows = stmt.query_map(params, |r| {
            Ok(VectorOwner {
                vid: r.get::<_, i64>(0)? as u64,
                mark_id: r.get(1)?,
                status: parse_status(r.get::<_, String>(2)?),
                holder: r.get(3)?,
                nice_classes: parse_classes(&r.get::<_, String>(4)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Calls `each` with every stored vector of `model` whose label is above
    /// `after`, in label order.
    pub fn for_each_vector(
        &self,
        model: &str,
        dim: usize,
        after: u64,
        mut each: impl FnMut(u64, Vec<f32>),
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT e.vid, e.vector, m.id FROM embeddings e JOIN marks m ON m.seq = e.mark_seq
              WHERE e.model = ?1 AND e.vid > ?2 ORDER BY e.vid",
        )?;
        let mut rows = stmt.query(params![model, after as i64])?;
        while let Some(row) = rows.next()? {
            let vid = row.get::<_, i64>(0)? as u64;
            let blob = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if blob.len() != dim * 4 {
                return Err(StoreError::CorruptVector {
                    mark_id: row.get(2)?,
                    found: blob.len(),
                    expected: dim * 4,
                });
            }
            each(vid, vector_from_bytes(blob));
        }
        Ok(())
    }

    /// Ids of all marks, for re-embedding.
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id FROM marks ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// The encoded keypoints of each view of a mark, in view order; empty blobs
    /// for views without any, and no entry at all for an unknown id.
    pub fn keypoints_of(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.view_blobs(
            "SELECT e.keypoints FROM marks m JOIN embeddings e ON e.mark_seq = m.seq
              WHERE m.id = ?1 ORDER BY e.view",
            id,
        )
    }

    /// The encoded frame of each view of a mark, in view order; empty blobs for
    /// views recorded without one, and no entry at all for an unknown id.
    pub fn frames_of(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.view_blobs(
            "SELECT e.frame FROM marks m JOIN embeddings e ON e.mark_seq = m.seq
              WHERE m.id = ?1 ORDER BY e.view",
            id,
        )
    }

    /// One blob per view of mark `id`, as `query` (a cached statement taking the
    /// id as ?1) selects them.
    fn view_blobs(&self, query: &str, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(query)?;
        let blobs = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(blobs)
    }

    /// Marks with a view that has keypoints but no frame: recorded from an image
    /// before frames were kept (schema version 3). Marks whose vectors came from
    /// elsewhere have neither and are not listed.
    pub fn ids_without_frames(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT m.id FROM marks m JOIN embeddings e ON e.mark_seq = m.seq
              WHERE length(e.keypoints) > 0 AND length(e.frame) = 0 ORDER BY m.id",
        )?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Replaces the vectors, keypoints and frames of a mark (same image, new
    /// model); returns the delta.
    pub fn replace_views(
        &mut self,
        id: &str,
        views: &[Vec<f32>],
        keypoints: &[Vec<u8>],
        frames: &[Vec<u8>],
        model: &str,
    ) -> Result<IndexDelta, StoreError> {
        let tx = self.conn.transaction()?;
        let mut delta = IndexDelta::default();
        let seq: i64 = tx.query_row("SELECT seq FROM marks WHERE id = ?1", [id], |r| r.get(0))?;
        delta.removed = vids_of(&tx, seq)?;
        tx.execute("DELETE FROM embeddings WHERE mark_seq = ?1", [seq])?;
        insert_views(&tx, seq, views, keypoints, frames, model, &mut delta)?;
        tx.execute(
            &format!("UPDATE marks SET updated_at = {NOW} WHERE seq = ?1"),
            [seq],
        )?;
        tx.commit()?;
        Ok(delta)
    }

    /// A value from the key-value table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Folds the write-ahead log into the main file (on clean shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

const SELECT_RECORD: &str = "
SELECT m.id, m.recordation_number, m.registration_number, m.name, m.holder, m.nice_classes,
       m.status, m.valid_until, m.image_sha256, m.image_format, count(e.vid),
       m.created_at, m.updated_at
  FROM marks m LEFT JOIN embeddings e ON e.mark_seq = m.seq";

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<MarkRecord> {
    Ok(MarkRecord {
        id: r.get(0)?,
        fields: MarkFields {
            recordation_number: r.get(1)?,
            registration_number: r.get(2)?,
            name: r.get(3)?,
            holder: r.get(4)?,
            nice_classes: parse_classes(&r.get::<_, String>(5)?),
            status: parse_status(r.get::<_, String>(6)?),
            valid_until: r.get(7)?,
        },
        image_sha256: r.get(8)?,
        image_format: r.get(9)?,
        views: r.get::<_, i64>(10)? as usize,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

fn put_one(
    tx: &Transaction<'_>,
    mark: &NewMark,
    model: &str,
    delta: &mut IndexDelta,
) -> Result<PutOutcome, StoreError> {
    let existing = tx
        .query_row(
            &format!("{SELECT_RECORD} WHERE m.id = ?1 GROUP BY m.seq"),
            [&mark.id],
            read_record,
        )
        .optional()?;
    // Same image under the same model: the vectors stay, only fields may change.
    let same_image = match &existing {
        Some(existing) => {
            let seq: i64 =
                tx.query_row("SELECT seq FROM marks WHERE id = ?1", [&mark.id], |r| {
                    r.get(0)
                })?;
            existing.image_sha256 == mark.image_sha256
                && existing.views > 0
                && vids_of_model(tx, seq, model)? == existing.views
        }
        None => false,
    };
    if same_image && existing.as_ref().map(|e| &e.fields) == Some(&mark.fields.normalised()) {
        return Ok(PutOutcome::Unchanged);
    }
    let f = &mark.fields;
    tx.execute(
        &format!(
            "INSERT INTO marks (id, recordation_number, registration_number, name, holder,
                nice_classes, status, valid_until, image_sha256, image_format, image,
                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, {NOW}, {NOW})
             ON CONFLICT(id) DO UPDATE SET
                recordation_number = excluded.recordation_number,
                registration_number = excluded.registration_number,
                name = excluded.name, holder = excluded.holder,
                nice_classes = excluded.nice_classes, status = excluded.status,
                valid_until = excluded.valid_until, image_sha256 = excluded.image_sha256,
                image_format = excluded.image_format, image = excluded.image,
                updated_at = excluded.updated_at"
        ),
        params![
            mark.id,
            f.recordation_number,
            f.registration_number,
            f.name,
            f.holder,
            format_classes(&f.nice_classes),
            f.status.as_str(),
            f.valid_until,
            mark.image_sha256,
            mark.image_format,
            mark.image
        ],
    )?;
    let seq: i64 = tx.query_row("SELECT seq FROM marks WHERE id = ?1", [&mark.id], |r| {
        r.get(0)
    })?;
    if existing.is_none() {
        insert_views(
            tx,
            seq,
            &mark.views,
            &mark.keypoints,
            &mark.frames,
            model,
            delta,
        )?;
        return Ok(PutOutcome::Created);
    }
    if same_image {
        return Ok(PutOutcome::Updated);
    }
    delta.removed.extend(vids_of(tx, seq)?);
    tx.execute("DELETE FROM embeddings WHERE mark_seq = ?1", [seq])?;
    insert_views(
        tx,
        seq,
        &mark.views,
        &mark.keypoints,
        &mark.frames,
        model,
        delta,
    )?;
    Ok(PutOutcome::Replaced)
}

fn insert_views(
    tx: &Transaction<'_>,
    seq: i64,
    views: &[Vec<f32>],
    keypoints: &[Vec<u8>],
    frames: &[Vec<u8>],
    model: &str,
    delta: &mut IndexDelta,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO embeddings (mark_seq, view, model, vector, keypoints, frame)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (view, vector) in views.iter().enumerate() {
        let points = keypoints.get(view).map_or(&[][..], Vec::as_slice);
        let frame = frames.get(view).map_or(&[][..], Vec::as_slice);
        stmt.execute(params![
            seq,
            view as i64,
            model,
            vector_to_bytes(vector),
            points,
            frame
        ])?;
        delta
            .added
            .push((tx.last_insert_rowid() as u64, vector.clone()));
    }
    Ok(())
}

fn vids_of(tx: &Transaction<'_>, seq: i64) -> Result<Vec<u64>, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT vid FROM embeddings WHERE mark_seq = ?1")?;
    let vids = stmt
        .query_map([seq], |r| r.get::<_, i64>(0).map(|v| v as u64))?
        .collect::<Result<_, _>>()?;
    Ok(vids)
}

fn vids_of_model(tx: &Transaction<'_>, seq: i64, model: &str) -> Result<usize, StoreError> {
    Ok(tx.query_row(
        "SELECT count(*) FROM embeddings WHERE mark_seq = ?1 AND model = ?2",
        params![seq, model],
        |r| r.get::<_, i64>(0).map(|v| v as usize),
    )?)
}

fn format_classes(classes: &[u8]) -> String {
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_classes(text: &str) -> Vec<u8> {
    text.split(';').filter_map(|c| c.parse().ok()).collect()
}

fn parse_status(text: String) -> MarkStatus {
    // Only this module writes the column, always from `MarkStatus::as_str`.
    text.parse().unwrap_or_default()
}

fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: &str, image: &[u8], v: f32) -> NewMark {
        NewMark {
            id: id.into(),
            fields: MarkFields {
                name: Some(format!("{id} name")),
                nice_classes: vec![25, 9],
                ..MarkFields::default()
            },
            image: image.to_vec(),
            image_sha256: format!("{:?}", image),
            image_format: "png".into(),
            views: vec![vec![v, 1.0 - v]],
            keypoints: vec![image.to_vec()],
            frames: vec![image.repeat(2)],
        }
    }

    #[test]
    fn warming_reads_the_file_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![7u8; (9 << 20) + 5]).unwrap();
        assert_eq!(warm_cache(&path, u64::MAX).unwrap(), (9 << 20) + 5);
        assert_eq!(warm_cache(&path, 1 << 20).unwrap(), 1 << 20);
        assert!(warm_cache(&dir.path().join("missing"), u64::MAX).is_err());
    }

    #[test]
    fn keypoints_and_frames_are_kept_per_view_and_replaced_with_the_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("m.db")).unwrap();
        let mut two = mark("a", b"1", 0.5);
        two.views.push(vec![0.0, 1.0]);
        two.keypoints.push(b"second".to_vec());
        store.put(&[two], "m1").unwrap();
        assert_eq!(
            store.keypoints_of("a").unwrap(),
            [b"1".to_vec(), b"second".to_vec()]
        );
        // The second view came without a frame.
        assert_eq!(store.frames_of("a").unwrap(), [b"11".to_vec(), Vec::new()]);
        store
            .replace_views(
                "a",
                &[vec![1.0, 0.0]],
                &[b"new".to_vec()],
                &[b"frame".to_vec()],
                "m2",
            )
            .unwrap();
        assert_eq!(store.keypoints_of("a").unwrap(), [b"new".to_vec()]);
        assert_eq!(store.frames_of("a").unwrap(), [b"frame".to_vec()]);
        assert!(store.keypoints_of("missing").unwrap().is_empty());
        assert!(store.frames_of("missing").unwrap().is_empty());
        // A view with keypoints and no frame was recorded before frames were
        // kept; one with neither came with its vector from elsewhere.
        let mut old = mark("b", b"2", 0.5);
        old.frames.clear();
        let mut outside = mark("c", b"3", 0.5);
        outside.keypoints.clear();
        outside.frames.clear();
        store.put(&[old, outside], "m2").unwrap();
        assert_eq!(store.ids_without_frames().unwrap(), ["b"]);
    }

    #[test]
    fn a_version_1_database_gains_empty_keypoints_and_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO marks (id, image_sha256, image_format, image, created_at, updated_at)
                 VALUES ('old', 'x', 'png', x'00', 'now', 'now')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO embeddings (mark_seq, view, model, vector) VALUES (1, 0, 'm0', x'')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.keypoints_of("old").unwrap(), [Vec::<u8>::new()]);
        assert_eq!(store.frames_of("old").unwrap(), [Vec::<u8>::new()]);
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn put_is_idempotent_and_replaces_on_new_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("m.db")).unwrap();
        let (out, delta) = store.put(&[mark("a", b"1", 0.5)], "m1").unwrap();
        assert_eq!(out, [PutOutcome::Created]);
        assert_eq!(delta.added.len(), 1);
        let first_vid = delta.added[0].0;

        let (out, delta) = store.put(&[mark("a", b"1", 0.5)], "m1").unwrap();
        assert_eq!(out, [PutOutcome::Unchanged]);
        assert_eq!(delta, IndexDelta::default());

        let mut renamed = mark("a", b"1", 0.5);
        renamed.fields.holder = Some("Holder".into());
        let (out, delta) = store.put(&[renamed], "m1").unwrap();
        assert_eq!(out, [PutOutcome::Updated]);
        assert_eq!(delta, IndexDelta::default());

        let (out, delta) = store.put(&[mark("a", b"2", 0.25)], "m1").unwrap();
        assert_eq!(out, [PutOutcome::Replaced]);
        assert_eq!(delta.removed, vec![first_vid]);
        assert!(delta.added[0].0 > first_vid, "labels are never reused");

        let record = store.get("a").unwrap().unwrap();
        assert_eq!(record.fields.nice_classes, vec![9, 25]);
        assert_eq!(record.views, 1);
        assert_eq!(store.counts().unwrap().vectors, 1);
    }

    #[test]
    fn data_survives_reopening_and_removal_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        {
            let mut store = Store::open(&path).unwrap();
            store
                .put(&[mark("a", b"1", 0.5), mark("b", b"2", 0.75)], "m1")
                .unwrap();
            assert_eq!(store.remove("a").unwrap().map(|v| v.len()), Some(1));
            assert_eq!(store.remove("a").unwrap(), None);
        }
        let store = Store::open(&path).unwrap();
        assert!(store.get("a").unwrap().is_none());
        let mut vectors = Vec::new();
        store
            .for_each_vector("m1", 2, 0, |vid, v| vectors.push((vid, v)))
            .unwrap();
        assert_eq!(vectors.len(), 1);
        assert_eq!(vectors[0].1, vec![0.75, 0.25]);
        assert_eq!(store.owners().unwrap()[0].mark_id, "b");
        assert_eq!(store.models().unwrap(), vec!["m1".to_owned()]);
    }

    #[test]
    fn list_filters_and_paginates() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("m.db")).unwrap();
        let mut marks: Vec<NewMark> = (0..5).map(|i| mark(&format!("m{i}"), &[i], 0.5)).collect();
        marks[3].fields.status = MarkStatus::Expired;
        marks[4].fields.holder = Some("ACME Corp".into());
        store.put(&marks, "m1").unwrap();
        let page = store
            .list(&ListQuery {
                after: Some("m0".into()),
                limit: 2,
                ..ListQuery::default()
            })
            .unwrap();
        let ids: Vec<_> = page.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"]);
        let expired = store
            .list(&ListQuery {
                status: Some(MarkStatus::Expired),
                ..ListQuery::default()
            })
            .unwrap();
        assert_eq!(expired.len(), 1);
        let acme = store
            .list(&ListQuery {
                holder: Some("acme".into()),
                ..ListQuery::default()
            })
            .unwrap();
        assert_eq!(acme[0].id, "m4");
    }
}
