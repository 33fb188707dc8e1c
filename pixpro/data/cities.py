"""City names of the synthetic scenes: their own module, so that config validation can count
them without importing the scene generator."""

# Fictional, lowercase, no underscores (the file stem is split on "_").
CITY_NAMES = (
    "aldermoor", "brisvale", "carrowick", "dunmere", "elsfield", "farrowgate", "glenhaven",
    "harrowby", "ivystone", "jesmondale", "kestrel", "lindenfurt", "marrowby", "northam",
    "oakhollow", "pennwick", "quarrington", "ravensholm", "saltmarsh", "thornbury",
    "umberfield", "valebridge", "westmoor", "yarrowfield",
)
