//! README.md must show spinbox's real diagram.

use spinbox::state::ShimState;

#[test]
fn readme_diagram_is_the_generated_one() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```mermaid\n")
        .expect("README.md has a mermaid block")
        + "```mermaid\n".len();
    let len = readme[start..]
        .find("```")
        .expect("mermaid block is closed");
    assert_eq!(
        &readme[start..start + len],
        ShimState::MERMAID,
        "README.md's diagram differs from ShimState::MERMAID; paste the generated one"
    );
}
