//! SIF (Singularity Image Format) reader and writer.
