//! Convex's URL rules: which `convex.url` values are accepted, and where a deployment serves
//! its HTTP actions.
//!
//! Pure (no IO); [`crate::config`] uses [`check`] to refuse a bad `convex.url` at load time
//! (naming the key), and [`super::ConvexSink`] uses all three.

/// Accepts `https://…` anywhere and `http://…` only for loopback hosts (`127.0.0.0/8`, `::1`,
/// `localhost`); the URL must be a bare deployment origin (no query or fragment).
///
/// # Errors
/// A message saying what is wrong with the URL.
pub fn check(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {raw}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "must be the deployment URL without query or fragment: {raw}"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "plain http:// is only allowed to a loopback host (127.0.0.1, ::1, localhost); use https:// for {}",
            url.host_str().unwrap_or("")
        )),
        other => Err(format!("scheme must be https (got {other}): {raw}")),
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The HTTP-actions origin of the deployment named by `url` (`convex.url`):
/// `https://<name>.convex.cloud` (the URL `npx convex deploy` prints; the function API) becomes
/// `https://<name>.convex.site`, where Convex serves HTTP actions; any other URL (a
/// `.convex.site` one, a custom domain, a self-hosted backend's HTTP-actions port such as
/// `http://127.0.0.1:3211`) is used as given. Credentials, query and fragment are dropped.
pub fn site_url(url: &url::Url) -> url::Url {
    let mut site = url.clone();
    let _ = site.set_username("");
    let _ = site.set_password(None);
    site.set_query(None);
    site.set_fragment(None);
    if let Some(host) = url.host_str() {
        let lower = host.to_ascii_lowercase();
        if let Some(name) = lower.strip_suffix(".convex.cloud") {
            // A valid host with one label changed stays valid.
            let _ = site.set_host(Some(&format!("{name}.convex.site")));
        }
    }
    site
}

/// `scheme://host[:port][/path]` without credentials, query or trailing slash (for logs and
/// `status`).
pub fn display(url: &url::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path().trim_end_matches('/'));
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        // (url, accepted)
        let table = [
            ("http://127.0.0.1:3210", true),
            ("http://127.1.2.3", true),
            ("http://[::1]:3210", true),
            ("http://localhost:3210", true),
            ("http://LOCALHOST", true),
            ("https://happy-otter-123.convex.cloud", true),
            ("https://telemetry.example.com/convex/", true),
            ("http://happy-otter-123.convex.cloud", false),
            ("http://10.0.0.1:3210", false),
            ("http://localhost.example.com", false),
            ("ftp://x", false),
            ("not a url", false),
            ("https://a.convex.cloud/?x=1", false),
            ("https://a.convex.cloud/#f", false),
        ];
        for (url, ok) in table {
            assert_eq!(check(url).is_ok(), ok, "{url}");
        }
        let err = check("http://happy-otter-123.convex.cloud").unwrap_err();
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn the_http_actions_origin_is_the_convex_site_twin() {
        // (convex.url, site_url shown)
        let table = [
            ("https://a.convex.cloud", "https://a.convex.site"),
            ("https://user:pw@a.convex.cloud/", "https://a.convex.site"),
            (
                "https://Happy-Otter-1.EU-West-1.Convex.Cloud",
                "https://happy-otter-1.eu-west-1.convex.site",
            ),
            ("https://a.convex.site", "https://a.convex.site"),
            (
                "https://telemetry.example.com/convex/",
                "https://telemetry.example.com/convex",
            ),
            (
                "http://127.0.0.1:3211/prefix",
                "http://127.0.0.1:3211/prefix",
            ),
        ];
        for (raw, shown) in table {
            assert_eq!(display(&site_url(&check(raw).unwrap())), shown, "{raw}");
        }
    }
}
