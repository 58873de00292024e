//! Code generated from `proto/` by `build.rs`: message types, tonic clients
//! and servers, and the descriptor set that server reflection serves.

/// The mesh's own APIs: discovery (sidecars) and admin (meshctl).
pub mod mesh {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("mesh.v1");

        /// The name of the one mesh settings resource: what the control
        /// plane sends it as and the proxy holds it by.
        pub const MESH_SETTINGS_NAME: &str = "mesh";

        impl Resource {
            /// Which resource this is, at which version: what a proxy
            /// holds, resumes from and refuses by.
            pub fn version_of(&self) -> ResourceVersion {
                ResourceVersion {
                    r#type: self.r#type,
                    name: self.name.clone(),
                    version: self.version.clone(),
                }
            }
        }
    }
}

/// The benchmark's echo workload (`bench/`).
pub mod bench {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("bench.v1");
    }
}

/// The shop's demo services.
pub mod shop {
    /// Products and prices.
    pub mod catalog {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("shop.catalog.v1");
        }
    }
    /// Stock and reservations.
    pub mod inventory {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("shop.inventory.v1");
        }
    }
    /// Charges and refunds.
    pub mod payments {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("shop.payments.v1");
        }
    }
    /// Orders and the saga that places them.
    pub mod orders {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("shop.orders.v1");
        }
    }
    /// Accounts, logins and the keys that verify their tokens.
    pub mod users {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("shop.users.v1");
        }
    }
}

/// Every file under `proto/` plus its imports, encoded as a
/// `google.protobuf.FileDescriptorSet`: what reflection hands to grpcurl.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mesh_descriptor");
