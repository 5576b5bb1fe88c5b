//! Image uploads that must leave nothing behind: a stranger's, one over the stream
//! bound, one whose fingerprint is not the one announced, a multipart body of the wrong
//! shape, one cut off mid-way by the client, and the leftovers of a crash.

use std::path::Path;
use std::time::Duration;

use stapes_testkit::{eventually, ClientCert, Member, Target};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);

/// A small unified image (gzip tarball).
fn unified(dir: &Path) -> Vec<u8> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("rootfs/etc")).unwrap();
    std::fs::write(
        tree.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties: {}\n",
    )
    .unwrap();
    std::fs::write(tree.join("rootfs/etc/hostname"), "x").unwrap();
    let st = std::process::Command::new("tar")
        .current_dir(&tree)
        .args(["-czf", "../u.tar.gz", "metadata.yaml", "rootfs"])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(dir.join("u.tar.gz")).unwrap()
}

async fn image_count(m: &Member) -> usize {
    let r = m.unix().get("/1.0/images").await.unwrap();
    r.metadata().as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test]
async fn t62_refused_uploads_leave_nothing() {
    let mut m = Member::start_env(&[("STAPES_MAX_STREAM_BODY", "65536")]).await;
    let addr = m.listen().await;
    let work = tempfile::tempdir().unwrap();
    let image = unified(work.path());
    let octet = ("content-type", "application/octet-stream");

    // A stranger: refused before the body is read.
    let stranger = Target::tls(&addr, Some(&ClientCert::generate("stranger")));
    let r = stranger
        .request("POST", "/1.0/images", Some(image.clone()), &[octet])
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    // Announced fingerprint not the upload's.
    let wrong = "0".repeat(64);
    let r = m
        .unix()
        .request(
            "POST",
            "/1.0/images",
            Some(image.clone()),
            &[octet, ("x-incus-fingerprint", &wrong)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("fingerprints don't match"),
        "{}",
        r.json()
    );

    // Over --max-stream-body: the gate's 413.
    let big = vec![0u8; 100_000];
    let r = m
        .unix()
        .request("POST", "/1.0/images", Some(big), &[octet])
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.json());

    // Multipart whose first part is not `metadata`.
    let body =
        b"--b\r\nContent-Disposition: form-data; name=\"rootfs\"; filename=\"r\"\r\n\r\nxx\r\n--b--\r\n"
            .to_vec();
    let r = m
        .unix()
        .request(
            "POST",
            "/1.0/images",
            Some(body),
            &[("content-type", "multipart/form-data; boundary=b")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Invalid multipart image");

    // A JSON request (a copy from elsewhere) is named as not served yet.
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/images",
            &serde_json::json!({"source": {"type": "url"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 501, "{}", r.json());

    // A client that goes away mid-upload.
    let mut s = tokio::net::UnixStream::connect(m.socket()).await.unwrap();
    let head = format!(
        "POST /1.0/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        image.len() * 4
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&image[..image.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    eventually(LIMIT, "the partial upload in progress", || async {
        m.image_files()
            .iter()
            .any(|f| f.starts_with(".partial-"))
            .then_some(())
    })
    .await;
    drop(s);
    eventually(LIMIT, "the partial upload removed", || async {
        m.image_files().is_empty().then_some(())
    })
    .await;
    assert_eq!(image_count(&m).await, 0);

    // What a crash left is cleared at start; a whole image survives the restart.
    let r = m
        .unix()
        .request("POST", "/1.0/images", Some(image.clone()), &[octet])
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.json());
    let op = r.json()["operation"].as_str().unwrap().to_string();
    let r = m.unix().get(&format!("{op}/wait?timeout=30")).await.unwrap();
    assert_eq!(r.metadata()["status"], "Success", "{}", r.json());
    m.kill9();
    std::fs::write(m.dir.join("images/.partial-0123456789abcdef"), b"half").unwrap();
    m.start_again().await;
    let fp = r.metadata()["metadata"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(m.image_files(), [fp]);
    assert_eq!(image_count(&m).await, 1);
}

#[tokio::test]
async fn t62_the_untrusted_see_public_images_only() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let work = tempfile::tempdir().unwrap();
    let image = unified(work.path());
    let r = m
        .unix()
        .request(
            "POST",
            "/1.0/images",
            Some(image.clone()),
            &[
                ("content-type", "application/octet-stream"),
                ("x-incus-aliases", "pub"),
            ],
        )
        .await
        .unwrap();
    let op = r.json()["operation"].as_str().unwrap().to_string();
    let r = m.unix().get(&format!("{op}/wait?timeout=30")).await.unwrap();
    let fp = r.metadata()["metadata"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let stranger = Target::tls(&addr, Some(&ClientCert::generate("stranger")));
    let status = |path: String| {
        let stranger = &stranger;
        async move { stranger.get(&path).await.unwrap().status }
    };

    // Private: as if it did not exist.
    let list = stranger.get("/1.0/images?recursion=1").await.unwrap();
    assert_eq!(list.status, 200);
    assert_eq!(list.metadata(), serde_json::json!([]));
    assert_eq!(status(format!("/1.0/images/{fp}")).await, 404);
    assert_eq!(status(format!("/1.0/images/{fp}/export")).await, 404);
    assert_eq!(status("/1.0/images/aliases/pub".into()).await, 404);
    assert_eq!(status("/1.0/images/aliases".into()).await, 403);

    // Public: listed, shown and exported; still not the stranger's to change.
    let r = m
        .unix()
        .send_json(
            "PATCH",
            &format!("/1.0/images/{fp}"),
            &serde_json::json!({"public": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let list = stranger.get("/1.0/images?recursion=1").await.unwrap();
    assert_eq!(list.metadata()[0]["fingerprint"], fp.as_str());
    assert_eq!(status(format!("/1.0/images/{}", &fp[..12])).await, 200);
    assert_eq!(status("/1.0/images/aliases/pub".into()).await, 200);
    let export = stranger.get(&format!("/1.0/images/{fp}/export")).await.unwrap();
    assert_eq!(export.status, 200);
    assert_eq!(export.body.as_ref(), image.as_slice());
    let r = stranger
        .send_json(
            "PATCH",
            &format!("/1.0/images/{fp}"),
            &serde_json::json!({"public": false}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = stranger
        .request("DELETE", &format!("/1.0/images/{fp}"), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(image_count(&m).await, 1);
}
