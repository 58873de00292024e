//! The peers' configuration: the files in `bench/envoy` and `bench/nginx`,
//! compiled in (so the benchmark runs from anywhere) and printed with the
//! results. `{{NAME}}` placeholders are filled in with ports and paths.

use anyhow::bail;

/// A configuration file of a peer proxy.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// Its path in the repository.
    pub path: &'static str,
    /// Its text.
    pub text: &'static str,
}

/// Envoy in front of the client: weighted 3:1, retries, outlier detection.
pub const ENVOY_OUTBOUND: Template = Template {
    path: "bench/envoy/outbound.yaml",
    text: include_str!("../envoy/outbound.yaml"),
};

/// Envoy in front of an echo server.
pub const ENVOY_INBOUND: Template = Template {
    path: "bench/envoy/inbound.yaml",
    text: include_str!("../envoy/inbound.yaml"),
};

/// [`ENVOY_OUTBOUND`] with mTLS to the server-side Envoys: TLS 1.3, ALPN
/// h2, a client certificate, the server's SPIFFE ID checked.
pub const ENVOY_OUTBOUND_MTLS: Template = Template {
    path: "bench/envoy/outbound-mtls.yaml",
    text: include_str!("../envoy/outbound-mtls.yaml"),
};

/// [`ENVOY_INBOUND`] with mTLS: TLS 1.3, ALPN h2, a client certificate
/// from the trust domain required.
pub const ENVOY_INBOUND_MTLS: Template = Template {
    path: "bench/envoy/inbound-mtls.yaml",
    text: include_str!("../envoy/inbound-mtls.yaml"),
};

/// Envoy at the edge (`bench abuse`): [`ENVOY_OUTBOUND`]'s route with
/// Envoy's edge best-practice limits, so the mesh's gateway is compared
/// with Envoy as Envoy advises running it before strangers.
pub const ENVOY_EDGE: Template = Template {
    path: "bench/envoy/edge.yaml",
    text: include_str!("../envoy/edge.yaml"),
};

/// nginx in front of the client: weighted 3:1 upstreams.
pub const NGINX_OUTBOUND: Template = Template {
    path: "bench/nginx/outbound.conf",
    text: include_str!("../nginx/outbound.conf"),
};

/// nginx in front of an echo server.
pub const NGINX_INBOUND: Template = Template {
    path: "bench/nginx/inbound.conf",
    text: include_str!("../nginx/inbound.conf"),
};

impl Template {
    /// The text with every `{{KEY}}` replaced; fails if one is left.
    pub fn render(&self, values: &[(&str, String)]) -> anyhow::Result<String> {
        let mut text = self.text.to_owned();
        for (key, value) in values {
            text = text.replace(&format!("{{{{{key}}}}}"), value);
        }
        if let Some(start) = text.find("{{") {
            let rest = &text[start..];
            let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
            bail!("{}: no value for {}", self.path, &rest[..end]);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Vec<(&'static str, String)> {
        [
            ("LISTEN_PORT", "20001"),
            ("ADMIN_PORT", "20002"),
            ("UPSTREAM_1_PORT", "20003"),
            ("UPSTREAM_2_PORT", "20004"),
            ("APP_PORT", "20005"),
            ("DIR", "/tmp/x"),
            ("NAME", "nginx-out"),
            ("CERT", "/tmp/x/echo.crt"),
            ("KEY", "/tmp/x/echo.key"),
            ("CA", "/tmp/x/bundle.crt"),
            ("TRUST_DOMAIN", "mesh.local"),
            ("PEER_ID", "spiffe://mesh.local/svc/echo"),
        ]
        .map(|(k, v)| (k, v.to_owned()))
        .to_vec()
    }

    #[test]
    fn every_template_renders_completely() {
        for template in [
            ENVOY_OUTBOUND,
            ENVOY_INBOUND,
            ENVOY_OUTBOUND_MTLS,
            ENVOY_INBOUND_MTLS,
            ENVOY_EDGE,
            NGINX_OUTBOUND,
            NGINX_INBOUND,
        ] {
            let text = template.render(&ports()).expect(template.path);
            assert!(!text.contains("{{"), "{}", template.path);
            assert!(text.contains("20001"), "{} listens", template.path);
        }
    }

    #[test]
    fn the_outbound_peers_are_weighted_three_to_one() {
        let envoy = ENVOY_OUTBOUND.render(&ports()).expect("envoy");
        assert!(envoy.contains("load_balancing_weight: 3"));
        assert!(envoy.contains("num_retries: 1"));
        assert!(envoy.contains("outlier_detection"));
        let nginx = NGINX_OUTBOUND.render(&ports()).expect("nginx");
        assert!(nginx.contains("127.0.0.1:20003 weight=3"));
        assert!(nginx.contains("127.0.0.1:20004 weight=1"));
    }

    #[test]
    fn the_mtls_envoys_are_tls_1_3_with_client_certificates() {
        let outbound = ENVOY_OUTBOUND_MTLS.render(&ports()).expect("outbound");
        assert!(outbound.contains("tls_minimum_protocol_version: TLSv1_3"));
        assert!(outbound.contains(r#"alpn_protocols: ["h2"]"#));
        assert!(outbound.contains(r#"matcher: { exact: "spiffe://mesh.local/svc/echo" }"#));
        assert!(outbound.contains("load_balancing_weight: 3"));
        let inbound = ENVOY_INBOUND_MTLS.render(&ports()).expect("inbound");
        assert!(inbound.contains("require_client_certificate: true"));
        assert!(inbound.contains("tls_maximum_protocol_version: TLSv1_3"));
    }

    #[test]
    fn a_missing_value_is_named() {
        let error = ENVOY_INBOUND.render(&[]).expect_err("no ports");
        assert!(error.to_string().contains("{{ADMIN_PORT}}"), "{error}");
    }
}
