//! The ACME lab itself: pebble answers its directory and hands out its issuing root.

use stapes_testkit::acme::{self, Lab};
use stapes_testkit::Target;

#[tokio::test]
async fn pebble_lab_starts() {
    if !acme::tools_available() {
        return;
    }
    let lab = Lab::start("acme.stapes.test", &["127.0.0.1"]).await;
    assert!(lab.directory_url().starts_with("https://127.0.0.1:"));
    assert!(lab.directory_url().ends_with("/dir"));
    assert_eq!(lab.http_port(), 5002);
    assert_eq!(std::fs::read_to_string(lab.ca_file()).unwrap(), lab.tls_ca_pem());

    let r = Target::tls(lab.api_addr(), None)
        .get("/dir")
        .await
        .expect("GET /dir");
    assert_eq!(r.status, 200, "{}", lab.log());
    assert!(r.json()["newOrder"].is_string(), "directory: {}", r.json());

    // pebble presents the certificate the lab made for it.
    let served = acme::served_chain(lab.api_addr()).await;
    let ours = trust::cert::pem_to_der(lab.tls_ca_pem()).unwrap();
    assert_eq!(served[0], ours);

    let root = lab.issuing_root_pem().await;
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "root: {root}");
    let inter = lab.intermediate_pem().await;
    let inter_der = trust::cert::pem_to_der(&inter).unwrap();
    assert!(
        acme::issued_by(&inter_der, &root),
        "intermediate is issued by the root"
    );
    assert!(!acme::issued_by(&inter_der, lab.tls_ca_pem()));
}
