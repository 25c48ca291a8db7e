# A package laid out like this one elsewhere on sys.path (a user's own modality room) joins it.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
