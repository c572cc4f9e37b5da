//! The fixed word list for typed codes and verification words.
//!
//! Exactly 256 distinct lowercase ASCII words, sorted, so one byte picks one word and a typed
//! word can be found by binary search. Changing the list breaks every code in flight: it is part
//! of the protocol.

pub(crate) const WORDS: [&str; 256] = [
    "acid", "acorn", "actor", "agent", "alarm", "album", "alien", "alpha", "amber", "angel",
    "ankle", "apple", "apron", "arena", "armor", "arrow", "atlas", "attic", "badge", "bagel",
    "baker", "bamboo", "banjo", "barrel", "basil", "beach", "beard", "berry", "bison", "blade",
    "blaze", "blimp", "bloom", "board", "bonus", "boxer", "brain", "brave", "bread", "brick",
    "bride", "broom", "brush", "bubble", "bucket", "buddy", "bugle", "cabin", "cactus", "camel",
    "candy", "canoe", "canvas", "cargo", "carpet", "carrot", "castle", "cedar", "chalk", "charm",
    "cheese", "cherry", "chess", "chief", "cider", "cinema", "circus", "citrus", "clay", "cliff",
    "clock", "cloud", "clover", "coach", "cobra", "cocoa", "comet", "coral", "cotton", "couch",
    "coyote", "crane", "crayon", "creek", "crown", "cube", "cupid", "curry", "daisy", "dance",
    "delta", "denim", "desert", "diary", "dingo", "disco", "dolphin", "donut", "dragon", "dream",
    "drum", "eagle", "earth", "echo", "eclipse", "elbow", "elder", "ember", "engine", "falcon",
    "fawn", "feather", "fern", "ferry", "fiddle", "finch", "flag", "flame", "flute", "focus",
    "forest", "fossil", "fox", "frost", "fruit", "galaxy", "garden", "garlic", "gecko", "genie",
    "ghost", "giant", "ginger", "glacier", "globe", "goat", "gold", "gorilla", "grape", "gravel",
    "guitar", "hammer", "harbor", "hazel", "helmet", "heron", "hippo", "honey", "hoop", "horse",
    "hotel", "husky", "igloo", "iris", "island", "ivory", "jacket", "jaguar", "jelly", "jewel",
    "jigsaw", "juice", "jungle", "kayak", "kettle", "kiwi", "koala", "ladder", "lagoon", "lamp",
    "lantern", "lemon", "lens", "lilac", "lily", "lime", "lion", "llama", "lobster", "locket",
    "lotus", "magnet", "mango", "maple", "marble", "meadow", "melon", "mint", "mirror", "moose",
    "mosaic", "muffin", "nectar", "needle", "noodle", "oasis", "ocean", "olive", "onion", "opal",
    "orbit", "orchid", "otter", "oyster", "paddle", "panda", "paper", "parrot", "peach", "peanut",
    "pearl", "pebble", "pepper", "piano", "pickle", "pilot", "pine", "pirate", "pixel", "planet",
    "plum", "pocket", "polar", "pony", "poppy", "potato", "prism", "puffin", "pumpkin", "puzzle",
    "quail", "quartz", "quill", "rabbit", "radar", "radio", "raven", "reef", "ribbon", "river",
    "robin", "rocket", "rose", "ruby", "saddle", "salmon", "sandal", "satin", "scarf", "shadow",
    "shark", "shell", "silver", "sketch", "sled", "snail",
];

pub(crate) fn word(b: u8) -> &'static str {
    WORDS[b as usize]
}

/// The index of `w` (already lowercased), if it is on the list.
pub(crate) fn index(w: &str) -> Option<u8> {
    WORDS.binary_search(&w).ok().map(|i| i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_unique_and_lowercase() {
        assert!(WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(
            WORDS
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
        );
        for (i, w) in WORDS.iter().enumerate() {
            assert_eq!(index(w), Some(i as u8));
        }
        assert_eq!(index("notaword"), None);
    }
}
