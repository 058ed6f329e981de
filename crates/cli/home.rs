//! The agency's state directory: the client library's (`rogatory_client::home`).

pub(crate) use rogatory_client::home::{
    Home, create_private_dir, make_private, parse_agency, read_chain, read_secret, write_file,
};
