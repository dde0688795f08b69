"""The paper's models and other heavy backends. Each module imports torch & co. lazily."""
